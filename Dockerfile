# syntax=docker/dockerfile:1
#
# One image for every role: KubeRay runs `ray start` in it for the head and the workers,
# and the job's entrypoint is `python -m job train --config FILE --data URI --output URI`.
#
#   docker build -t multilabel-job:0.1.0 .                              # GPU (CUDA from pip)
#   docker build -t multilabel-job:0.1.0-cpu --build-arg VARIANT=cpu .  # CPU only, smaller
#
# Dependencies come from pyproject.toml (`pip install .`): there is no second list here.

# ---------------------------------------------------------------------------------------
# build: a virtualenv in /opt/venv with the project and its dependencies.
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim AS build
ARG VARIANT=gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# The GPU variant installs `tensorflow[and-cuda]` (CUDA and cuDNN as pip wheels) at the
# version pyproject.toml pins, so `pip install .` below finds it already satisfied. The
# version is read from pyproject.toml rather than repeated here.
COPY pyproject.toml ./
RUN case "${VARIANT}" in \
      gpu) tf_version="$(python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(next(d.split("==")[1] for d in deps if d.startswith("tensorflow==")))')" \
           && pip install --no-cache-dir "tensorflow[and-cuda]==${tf_version}" ;; \
      cpu) echo "VARIANT=cpu: plain tensorflow from pyproject.toml" ;; \
      *)   echo "VARIANT must be gpu or cpu, got '${VARIANT}'" >&2; exit 1 ;; \
    esac

# The project itself (its dependency list is pyproject.toml's), not editable.
COPY README.md ./
COPY job ./job
RUN pip install --no-cache-dir . \
    && python -c "import job, ray, tensorflow, tf_keras"

# ---------------------------------------------------------------------------------------
# runtime: the interpreter, the virtualenv and a non-root user; no compilers, no pip cache.
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime
ARG VARIANT=gpu
LABEL org.opencontainers.image.title="multilabel-job" \
      org.opencontainers.image.description="Distributed multi-label image classification on Ray Train + TensorFlow" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.multilabel.variant="${VARIANT}"

# A fixed numeric UID/GID so Kubernetes can check runAsNonRoot without reading /etc/passwd.
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /bin/bash app

COPY --from=build /opt/venv /opt/venv
# Preset configs, for `ray job submit` users who run them from the image: `--config demo`
# finds /opt/multilabel/configs/demo.yaml through MULTILABEL_CONFIG_DIR (set below), and
# `python -m job demo` uses the same CPU-sized preset as in the repository.
COPY configs /opt/multilabel/configs

# PYTHONUNBUFFERED: log lines reach `kubectl logs` / `ray job logs` as they happen.
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the pods.
# MPLCONFIGDIR: matplotlib wants a writable cache; /tmp is an emptyDir in the pods.
# TF_ENABLE_ONEDNN_OPTS: oneDNN kernels on every x86 CPU, not only AVX-512 ones (job/__init__.py
# sets it too, but ray.train.tensorflow may import TensorFlow in a worker before our code runs).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    MPLCONFIGDIR=/tmp/matplotlib \
    MULTILABEL_CONFIG_DIR=/opt/multilabel/configs \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_ENABLE_ONEDNN_OPTS=1

USER 10001:10001
WORKDIR /home/app

# No Docker HEALTHCHECK: the container's health is a Ray node's health, and on Kubernetes
# the kubelet probes it (the RayJob's liveness/readiness probes ask the Ray dashboard agent);
# a one-shot training container has nothing else to report. Docker-only health checks are
# ignored by Kubernetes anyway.
HEALTHCHECK NONE

# KubeRay replaces the command with `ray start ...`; `docker run IMAGE` shows the CLI help.
CMD ["python", "-m", "job", "--help"]
