"""The local overlay's RayJob, run the way KubeRay would run it (tests/kuberay_emulator.py):
`kubectl kustomize k8s/overlays/local`, a head pod and one pod per worker replica, each a
real Ray node in its own network namespace with the env, files and `ray start` flags
KubeRay would give it, and the submitter's `ray job submit` with the RayJob's entrypoint,
against the embedded S3 server standing in for the overlay's MinIO Service.

It fails when the deployment files drift from the code: an entrypoint the CLI rejects or
that names a file no volume mounts, a config key the code rejects, a worker group whose
pods cannot hold the training workers and Ray Data, a metrics port the PodMonitor names but
no pod serves, Ray token auth set up on one side only. Then the same cluster runs batch
inference (`predict --data`) over the trained run, as docs/batch-inference.md says to.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from job.storage import embedded
from tests.deploy.helpers import render
from tests.kuberay_emulator import RAY_TEMP_DIR, KubeRayEmulator
from tests.pod_network import PodNetwork, require_pod_network
from tests.prometheus_server import PrometheusServer

pytestmark = pytest.mark.timeout(1500)

# What the user creates by hand before `kubectl apply -k` (docs/deploy.md, k8s/overlays/local).
MINIO_SERVICE = "minio.multilabel.svc.cluster.local"
S3_KEY = "emulated-access-key"
RUN_TIMEOUT = 1200
EPOCHS = 2
PREDICTIONS = "runs/multilabel-train-predictions/test"
PREDICT_ENTRYPOINT = (
    "python -m job predict --model s3://multilabel/runs/multilabel-train --data s3://multilabel/datasets/demo "
    f"--split test --output s3://multilabel/{PREDICTIONS}"
)


def _objects() -> list[dict]:
    return [d for d in yaml.safe_load_all(render("local")) if d]


def _podmonitor_jobs(objects: list[dict], cluster: KubeRayEmulator) -> dict[str, list[str]]:
    """Scrape targets as the Prometheus Operator derives them from the PodMonitor: for each
    endpoint's port name, every selected pod that has a container port of that name."""
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    jobs: dict[str, list[str]] = {}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        name = endpoint["port"]
        jobs[name] = [
            f"{pod.ip}:{cluster.ports(pod)[name]}"
            for pod in cluster.ray_pods()
            if selector.items() <= pod.labels.items() and name in cluster.ports(pod)
        ]
    return jobs


def test_local_overlay_rayjob_runs_as_kuberay_runs_it(tmp_path):
    require_pod_network()
    objects = _objects()
    # The overlay's entrypoint as it is, for 2 of its 8 epochs: what this test checks is that
    # the files run; the six more epochs cost CI a minute and a half.
    (rayjob,) = [o for o in objects if o["kind"] == "RayJob"]
    rayjob["spec"]["entrypoint"] = f"{rayjob['spec']['entrypoint'].strip()} --set training.epochs={EPOCHS}"
    Path(RAY_TEMP_DIR).mkdir(parents=True, exist_ok=True)  # the pods' mount point
    workdir = Path(tempfile.mkdtemp(prefix="kuberay-"))
    net = PodNetwork()
    s3 = None
    passed = False
    try:
        # The overlay's MinIO Service, with the bucket its bucket-init Job makes.
        s3 = embedded.start(host=net.gateway, port=9000)
        secrets = {
            "multilabel-s3": {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_KEY},
            "multilabel-ray-auth": {"auth_token": uuid.uuid4().hex},
        }
        cluster = KubeRayEmulator(objects, secrets, {MINIO_SERVICE: net.gateway}, net, workdir)
        client = boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="multilabel")
        cluster.start()
        jobs = _podmonitor_jobs(objects, cluster)
        with PrometheusServer.start(tmp_path / "prometheus", jobs) as prom:
            code, log = cluster.submit(timeout=RUN_TIMEOUT)
            status = cluster.job_status()
            errors = "\n".join(dict.fromkeys(line for line in log.splitlines() if line.startswith("error:")))
            assert status == "SUCCEEDED" and code == 0, f"job {status}, submitter exit {code}: {errors}\n{log}"

            # Every port the PodMonitor names was served by every pod declaring it.
            up = prom.query("max_over_time(up[1h])")
            seen = {(r["metric"]["job"], r["metric"]["instance"]): float(r["value"][1]) for r in up}
            expected = {(job, target) for job, targets in jobs.items() for target in targets}
            assert {key for key, value in seen.items() if value == 1} >= expected, (expected, seen)
            assert all(jobs.values()), f"a PodMonitor endpoint matches no port of any pod: {jobs}"

            # One Ray Train worker per worker pod: ranks 0 and 1 scraped from different pods.
            steps = prom.query('max_over_time(multilabel_train_steps_total{job="train-metrics"}[1h])')
            pod_of_rank = {r["metric"]["rank"]: r["metric"]["instance"] for r in steps}
            assert sorted(pod_of_rank) == ["0", "1"] and len(set(pod_of_rank.values())) == 2, pod_of_rank

        # The run's outputs are under the entrypoint's --output prefix.
        listing = client.list_objects_v2(Bucket="multilabel", Prefix="runs/multilabel-train/")
        keys = [o["Key"] for o in listing.get("Contents", [])]
        assert "runs/multilabel-train/metrics.json" in keys, keys
        assert any(k.startswith("runs/multilabel-train/checkpoint_epoch-") for k in keys), keys

        # Batch inference on the same cluster, as docs/batch-inference.md says to run it: the
        # RayJob's entrypoint replaced by `predict --data`; decode tasks and the model actor
        # run on the worker pods (the head offers no CPUs), the driver writes the parts.
        code, log = cluster.submit(timeout=RUN_TIMEOUT, entrypoint=PREDICT_ENTRYPOINT)
        status = cluster.job_status()
        assert status == "SUCCEEDED" and code == 0, f"predict job {status}, submitter exit {code}\n{log}"
        success = json.loads(client.get_object(Bucket="multilabel", Key=f"{PREDICTIONS}/_SUCCESS")["Body"].read())
        assert success["images"] == success["predicted"] > 0 and success["bad_images"] == 0, success
        passed = True
    finally:
        net.stop()
        if s3 is not None:
            s3.stop()
        if passed:  # else the pods' logs stay for the reader of the failure
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"pods' files and logs: {workdir}")
