"""Prometheus metric definitions and exposition for the driver and the training workers.

Metric names, labels and ports are the contract in docs/architecture.md ("Metric names");
the dashboard, the alert rules and the PodMonitor in monitoring/ and k8s/monitoring/ depend
on them, and tests compare those files against a real exposition from this module.

Every object owns its own ``CollectorRegistry``: a driver and a worker can live in one
process (local runs, tests) without clashing, and nothing lands in the global registry.
This module imports prometheus_client only: no TensorFlow, no Ray.

Telemetry must never stop training: a port that is taken or a server that will not start is
logged as a warning and the object keeps recording into its registry without serving it.

Where the servers listen is ``telemetry.bind_address`` (``resolve_bind_address``): by default
loopback on a laptop, all interfaces in a pod or on a Ray cluster, where Prometheus scrapes
from another machine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

log = logging.getLogger(__name__)

#: ``telemetry.bind_address`` value that picks the address from where the process runs.
AUTO_BIND = "auto"
#: What "auto" binds outside a pod or cluster: only this machine can scrape.
LOOPBACK_ADDRESS = "127.0.0.1"
#: What "auto" binds in a pod or on a Ray cluster: Prometheus scrapes from other machines.
ALL_INTERFACES = "0.0.0.0"

#: Step times from 5 ms (a tiny model on a GPU) to 60 s (a huge batch on CPU).
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Checkpoint saves from 50 ms (a small local model) to 10 min (a large model to S3).
CHECKPOINT_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: Steps over which the throughput and stall-ratio gauges are averaged. Long enough to
#: smooth out a single slow batch, short enough to show a slowdown within a minute.
WINDOW_STEPS = 50

RESTART_CAUSES = ("failure", "preemption")
RUN_STATES = ("running", "succeeded", "failed")

#: Keras log key -> (metric name, help). Keys missing from an epoch's logs are skipped.
EPOCH_GAUGES: dict[str, tuple[str, str]] = {
    "loss": ("multilabel_train_loss", "Training loss of the last finished epoch."),
    "val_loss": ("multilabel_val_loss", "Validation loss of the last finished epoch."),
    "val_binary_accuracy": (
        "multilabel_val_binary_accuracy",
        "Validation binary accuracy (mean over labels) of the last finished epoch.",
    ),
    "val_macro_f1": ("multilabel_val_macro_f1", "Validation macro-averaged F1 of the last finished epoch."),
    "val_mean_average_precision": (
        "multilabel_val_mean_average_precision",
        "Validation mean average precision over labels of the last finished epoch.",
    ),
    "learning_rate": ("multilabel_learning_rate", "Learning rate at the end of the last finished epoch."),
}


def resolve_bind_address(setting: str = AUTO_BIND, environ: Mapping[str, str] | None = None) -> str:
    """Return the address the ``/metrics`` servers listen on for ``telemetry.bind_address``.

    An explicit address is returned as it is (the config has checked it is an IP address;
    one that cannot be bound is a warning when the server starts). "auto" reads the
    environment:

    - ``KUBERNETES_SERVICE_HOST`` set (the kubelet sets it in every pod): all interfaces, so
      the PodMonitor's Prometheus can scrape the pod's IP;
    - ``RAY_ADDRESS`` set: the process joined an existing Ray cluster (the driver of a
      cluster run, as ``ray job submit`` and ``job.cluster.driver.connect`` see it, or a Ray
      node that KubeRay started): all interfaces, the workers may be on other machines;
    - otherwise (``train --local``, or a Ray that the driver starts on this machine):
      loopback, so a laptop does not publish its metrics to the network it is on.

    Args:
        setting: "auto" or an IP address.
        environ: the environment to read (default ``os.environ``).

    Returns:
        An IP address literal, e.g. "127.0.0.1" or "0.0.0.0".
    """
    if setting != AUTO_BIND:
        return setting
    env = os.environ if environ is None else environ
    if env.get("KUBERNETES_SERVICE_HOST") or env.get("RAY_ADDRESS"):
        return ALL_INTERFACES
    return LOOPBACK_ADDRESS


def worker_port(base_port: int, local_rank: int) -> int:
    """Return the metrics port of the worker with ``local_rank`` on its node.

    Args:
        base_port: ``telemetry.worker_port_base`` (default 9401).
        local_rank: the worker's rank among the workers of its node (0, 1, ...).

    Returns:
        ``base_port + local_rank``.
    """
    if local_rank < 0:
        raise ValueError(f"local_rank must be >= 0, got {local_rank}")
    return base_port + local_rank


class _Exporter:
    """A private registry plus an optional HTTP server that serves it on ``/metrics``."""

    def __init__(self, who: str, port: int | None, enabled: bool, bind_address: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.port: int | None = None
        #: The address the server listens on (resolved from "auto" when it starts).
        self.bind_address: str = bind_address
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._who = who
        self._wanted_port = port if enabled and port else None

    def _serve(self) -> None:
        """Start the HTTP server if a port was asked for; warn and carry on if it fails."""
        if self._wanted_port is None:
            return
        self.bind_address = resolve_bind_address(self.bind_address)
        try:
            self._server, self._thread = start_http_server(
                self._wanted_port, addr=self.bind_address, registry=self.registry
            )
        except OSError as exc:
            log.warning(
                "%s metrics: cannot serve on %s:%d (%s); training continues without a "
                "/metrics endpoint. Free the port or set telemetry ports (or telemetry.bind_address) in the config.",
                self._who,
                self.bind_address,
                self._wanted_port,
                exc,
            )
            return
        self.port = int(self._server.server_address[1])
        log.debug("%s metrics on http://%s:%d/metrics", self._who, self.bind_address, self.port)

    def exposition(self) -> bytes:
        """Return the registry in the Prometheus text format (what a scrape would get)."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop the HTTP server, if any, and free its port. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.port = None

    def __enter__(self):  # noqa: D105
        return self

    def __exit__(self, *exc: object) -> None:  # noqa: D105
        self.close()


class WorkerTelemetry(_Exporter):
    """Metrics of one training worker, labelled ``run`` and ``rank``.

    Args:
        run: the run name (the basename of the run URI).
        rank: the worker's global rank.
        port: the port to serve ``/metrics`` on (see ``worker_port``); None or 0 serves nothing.
        enabled: False serves nothing (recording still works and costs little).
        bind_address: ``telemetry.bind_address``: "auto" (``resolve_bind_address``) or an IP.
    """

    def __init__(
        self, run: str, rank: int, port: int | None, enabled: bool = True, bind_address: str = AUTO_BIND
    ) -> None:
        super().__init__(f"worker rank {rank}", port, enabled, bind_address)
        self.run = run
        self.rank = rank
        labels = ("run", "rank")
        values = (run, str(rank))
        reg = self.registry

        # Counters are created with their labels up front, so they are exported as 0 from the
        # first scrape: `increase()` and the alert rules then see the very first step or
        # checkpoint failure (a series that appears at 1 has no earlier sample to compare).
        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(*values)

        self._steps = counter("multilabel_train_steps", "Training steps (batches) finished by this worker.")
        self._examples = counter("multilabel_train_examples", "Training examples processed by this worker.")
        self._input_wait = counter(
            "multilabel_input_wait_seconds", "Seconds this worker spent waiting for the next input batch."
        )
        self._step_seconds = histogram(
            "multilabel_train_step_seconds",
            "Wall time of one training step, input wait included.",
            STEP_SECONDS_BUCKETS,
        )
        self._ckpt_seconds = histogram(
            "multilabel_checkpoint_save_seconds",
            "Wall time of one successful checkpoint save (rank 0 saves).",
            CHECKPOINT_SECONDS_BUCKETS,
        )
        self._ckpt_saves = counter("multilabel_checkpoint_saves", "Checkpoints saved successfully.")
        self._ckpt_failures = counter("multilabel_checkpoint_failures", "Checkpoint saves that failed.")
        self._s3_retries = counter("multilabel_s3_retries", "Object-storage requests retried by this worker.")
        self._upload_seconds = histogram(
            "multilabel_checkpoint_upload_seconds",
            "Wall time of one checkpoint upload to the run folder (in the background when uploads are async).",
            CHECKPOINT_SECONDS_BUCKETS,
        )
        self._upload_failures = counter(
            "multilabel_checkpoint_upload_failures", "Checkpoint upload attempts that failed (each is retried)."
        )
        self._upload_queue = Gauge(
            "multilabel_checkpoint_upload_queue",
            "Checkpoint uploads handed over but not finished yet.",
            labels,
            registry=reg,
        ).labels(*values)
        self._world_size = Gauge(
            "multilabel_world_size", "Workers in the current worker group.", labels, registry=reg
        ).labels(*values)

        # Gauges are bound lazily (their first value is set before they are exported): a 0
        # throughput or loss before the first step or epoch would be a lie on the dashboard.
        self._throughput = Gauge(
            "multilabel_train_examples_per_second",
            f"Training examples per second over the last {WINDOW_STEPS} steps.",
            labels,
            registry=reg,
        )
        self._stall = Gauge(
            "multilabel_input_stall_ratio",
            f"Share (0..1) of step time spent waiting for input over the last {WINDOW_STEPS} steps.",
            labels,
            registry=reg,
        )
        self._epoch = Gauge(
            "multilabel_epoch", "Last finished epoch (1-based as in the console line).", labels, registry=reg
        )
        self._epoch_gauges = {key: Gauge(name, doc, labels, registry=reg) for key, (name, doc) in EPOCH_GAUGES.items()}
        self._values = values

        self._lock = threading.Lock()
        self._window: deque[tuple[float, int, float]] = deque(maxlen=WINDOW_STEPS)
        self._serve()

    def record_step(self, step_seconds: float, examples: int, input_wait_seconds: float) -> None:
        """Record one finished training step.

        Args:
            step_seconds: wall time of the step, input wait included.
            examples: examples in the step's batch on this worker.
            input_wait_seconds: part of ``step_seconds`` spent waiting for the batch.
        """
        step_seconds = max(float(step_seconds), 0.0)
        input_wait_seconds = min(max(float(input_wait_seconds), 0.0), step_seconds)
        examples = max(int(examples), 0)
        self._steps.inc()
        self._examples.inc(examples)
        self._input_wait.inc(input_wait_seconds)
        self._step_seconds.observe(step_seconds)
        with self._lock:
            self._window.append((step_seconds, examples, input_wait_seconds))
            total_seconds = sum(s for s, _, _ in self._window)
            total_examples = sum(e for _, e, _ in self._window)
            total_wait = sum(w for _, _, w in self._window)
        if total_seconds > 0:
            self._throughput.labels(*self._values).set(total_examples / total_seconds)
            self._stall.labels(*self._values).set(min(1.0, total_wait / total_seconds))

    def record_epoch(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Record the end of an epoch.

        Args:
            epoch: the finished epoch, as shown to the user.
            logs: Keras epoch logs; the keys in ``EPOCH_GAUGES`` are exported, others and
                values that are not numbers are ignored. NaN is exported as NaN (the alert
                rules watch for it).
        """
        self._epoch.labels(*self._values).set(epoch)
        for key, gauge in self._epoch_gauges.items():
            if key not in logs:
                continue
            try:
                value = float(logs[key])
            except (TypeError, ValueError):
                log.debug("metrics: ignoring non-numeric %s=%r", key, logs[key])
                continue
            gauge.labels(*self._values).set(value)

    def record_checkpoint(self, seconds: float, ok: bool) -> None:
        """Record one checkpoint save attempt.

        Args:
            seconds: wall time of the attempt.
            ok: True if the checkpoint was saved and registered; False if the save failed.
        """
        if ok:
            self._ckpt_saves.inc()
            self._ckpt_seconds.observe(max(float(seconds), 0.0))
        else:
            self._ckpt_failures.inc()

    def add_s3_retries(self, n: int) -> None:
        """Add ``n`` retried object-storage requests (ignored if ``n <= 0``)."""
        if n > 0:
            self._s3_retries.inc(n)

    def set_world_size(self, n: int) -> None:
        """The number of workers in this worker's group."""
        self._world_size.set(n)

    def upload_started(self) -> None:
        """A checkpoint upload was handed over (it may run in the background)."""
        self._upload_queue.inc()

    def upload_finished(self, seconds: float | None) -> None:
        """A handed-over upload ended: ``seconds`` of wall time, or None when it failed for good."""
        self._upload_queue.dec()
        if seconds is not None:
            self._upload_seconds.observe(max(float(seconds), 0.0))

    def add_upload_failure(self) -> None:
        """One upload attempt failed (and is retried, or fails the upload)."""
        self._upload_failures.inc()


class DriverTelemetry(_Exporter):
    """Metrics of the driver (one per run), labelled ``run``.

    Args:
        run: the run name.
        port: the port to serve ``/metrics`` on (``telemetry.driver_port``); None or 0 serves nothing.
        enabled: False serves nothing.
        bind_address: ``telemetry.bind_address``: "auto" (``resolve_bind_address``) or an IP.
    """

    def __init__(self, run: str, port: int | None, enabled: bool = True, bind_address: str = AUTO_BIND) -> None:
        super().__init__("driver", port, enabled, bind_address)
        self.run = run
        reg = self.registry
        self._state = Gauge(
            "multilabel_run_state",
            "1 for the run's current state (running, succeeded, failed), 0 for the others.",
            ("run", "state"),
            registry=reg,
        )
        for state in RUN_STATES:
            self._state.labels(run, state).set(0)
        restarts = Counter(
            "multilabel_worker_restarts",
            "Times the worker group was restarted, by cause: failure (a worker or its node died) or "
            "preemption (a node was drained with notice, e.g. a spot reclaim).",
            ("run", "cause"),
            registry=reg,
        )
        self._restarts = {cause: restarts.labels(run, cause) for cause in RESTART_CAUSES}
        self._preemptions = Counter(
            "multilabel_preemptions", "Preemption notices the workers acted on.", ("run",), registry=reg
        ).labels(run)
        self._s3_retries = Counter(
            "multilabel_s3_retries", "Object-storage requests retried by the driver.", ("run",), registry=reg
        ).labels(run)
        self.state: str | None = None
        self._serve()

    def set_state(self, state: str) -> None:
        """Make ``state`` (running | succeeded | failed) the run's current state."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}; expected one of {', '.join(RUN_STATES)}")
        for other in RUN_STATES:
            self._state.labels(self.run, other).set(1 if other == state else 0)
        self.state = state

    def add_worker_restarts(self, n: int, cause: str = "failure") -> None:
        """Add ``n`` restarts of the worker group for `cause` (failure | preemption); ``n <= 0`` is ignored."""
        if n > 0:
            self._restarts[cause].inc(n)

    def add_preemptions(self, n: int) -> None:
        """Add ``n`` preemption notices (ignored if ``n <= 0``)."""
        if n > 0:
            self._preemptions.inc(n)

    def add_s3_retries(self, n: int) -> None:
        """Add ``n`` retried object-storage requests (ignored if ``n <= 0``)."""
        if n > 0:
            self._s3_retries.inc(n)
