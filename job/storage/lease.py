"""The run lease: one live driver per run folder, on local disk and on S3.

Two `train` commands on one `--output` would interleave checkpoints and report each other's
results. The driver therefore holds RUN/lease.json while it trains and evaluates:

    {"owner": "4f1c…", "host": "ip-10-0-3-7", "pid": 8123, "pid_start": 912345,
     "chain": "default/multilabel-train", "started": 1764950000.0, "timeout_seconds": 60.0}

and rewrites it every timeout/4 seconds (its heartbeat). A second driver reads it and:

- takes it if there is none, or if the holder is provably gone: its heartbeat is older
  than its timeout (a SIGKILLed or partitioned driver), or it ran on this host and its
  process no longer exists (a driver killed a moment ago; a resume need not wait);
- takes it at once if both belong to the same attempt chain (`JOB_RUN_CHAIN`, which the
  RayJob sets to its namespace/name: a KubeRay retry of the same job resumes as before);
- otherwise refuses, naming the holder (host, pid, chain, heartbeat age).

Every change is a compare-and-swap, so two drivers racing for a stale lease cannot both win:
on S3 a conditional PUT (`If-None-Match: *` to create, `If-Match: ETAG` to replace; AWS S3,
MinIO and the embedded server honour both), locally an exclusive `flock` around
read-check-write (on one host; a local run folder shared between hosts over NFS gets no
such guarantee). Ages come from one clock: the server's for S3 (its Date and Last-Modified
headers), this host's for local files. A holder whose heartbeat finds the lease taken
stops its run (`on_lost`) instead of writing on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from job.errors import UserError
from job.storage.client import _error_code, _s3_errors, s3_client
from job.storage.paths import _local, _split, is_s3, join
from job.storage.run_store import LEASE_FILE

log = logging.getLogger(__name__)

CHAIN_ENV = "JOB_RUN_CHAIN"
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class LeaseHeld(UserError):
    """Another live driver holds the run's lease."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease (the content of lease.json)."""

    owner: str
    host: str
    pid: int
    pid_start: int
    chain: str
    started: float
    timeout_seconds: float
    # Host names repeat (containers, CI runners); the kernel's boot id and the pid namespace
    # say whether `pid` can be checked from here at all.
    boot_id: str = ""
    pid_namespace: str = ""

    def describe(self) -> str:
        chain = f", attempt chain {self.chain}" if self.chain else ""
        return f"owner {self.owner[:8]} on host {self.host} (pid {self.pid}{chain})"


def _process_start(pid: int) -> int:
    """The start time of process `pid` in clock ticks since boot (Linux), 0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # Field 22; the command name (field 2) may hold spaces, so count from its ')'.
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _gone_from_this_host(holder: Holder) -> bool:
    """True when `holder` ran on this kernel, in this pid namespace, and its process has exited
    (or its pid was reused). Anything unknown counts as "cannot tell": False."""
    here = (socket.gethostname(), _boot_id(), _pid_namespace())
    if not all(here) or (holder.host, holder.boot_id, holder.pid_namespace) != here:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    start = _process_start(holder.pid)
    return bool(holder.pid_start and start and start != holder.pid_start)


# ---------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class _Seen:
    """A lease as read: its holder (None if unreadable), age in seconds, and the token to replace it."""

    holder: Holder | None
    age_seconds: float
    token: str


class _LocalBackend:
    def __init__(self, run_uri: str):
        self.folder = _local(run_uri)
        self.path = os.path.join(self.folder, LEASE_FILE)
        # The flock file lives outside the run folder, keyed by its real path, so that a run
        # refused before it wrote anything leaves nothing behind. It is never deleted: every
        # driver must lock the same inode.
        digest = hashlib.sha256(os.path.realpath(self.folder).encode()).hexdigest()[:32]
        self.lock_path = os.path.join(tempfile.gettempdir(), "multilabel-job-locks", f"{digest}.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.folder, exist_ok=True)
        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        with open(self.lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_unlocked(self) -> _Seen | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        return _Seen(_parse(data), age, data.decode("utf-8", "replace"))

    def read(self) -> _Seen | None:
        with self._locked():
            return self._read_unlocked()

    def put(self, body: bytes, token: str | None) -> str | None:
        """Write `body` if the lease is still as read (`token`; None: absent); the new token or None."""
        with self._locked():
            now = self._read_unlocked()
            if (now.token if now else None) != token:
                return None
            # Not named *.partial-*: a resuming run sweeps those, and this one is under the lock.
            tmp = os.path.join(self.folder, f".{LEASE_FILE}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            return body.decode("utf-8", "replace")

    def delete(self, token: str) -> None:
        with self._locked():
            now = self._read_unlocked()
            if now and now.token == token:
                os.unlink(self.path)


class _S3Backend:
    def __init__(self, run_uri: str):
        self.uri = join(run_uri, LEASE_FILE)
        self.bucket, self.key = _split(self.uri)

    def read(self) -> _Seen | None:
        from email.utils import parsedate_to_datetime

        client = s3_client()
        with _s3_errors(self.uri, "read the run lease"):
            try:
                response = client.get_object(Bucket=self.bucket, Key=self.key)
            except Exception as exc:  # noqa: BLE001 - only "no such key" means no lease
                if _error_code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            data = response["Body"].read()
        # Both times from the server's clock: hosts' clocks may disagree.
        server_now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (server_now - response["LastModified"]).total_seconds()
        return _Seen(_parse(data), max(age, 0.0), response["ETag"])

    def put(self, body: bytes, token: str | None) -> str | None:
        condition = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        with _s3_errors(self.uri, "write the run lease"):
            try:
                response = s3_client().put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)
            except Exception as exc:  # noqa: BLE001 - a failed precondition is an answer, not an error
                # If-Match on a lease someone deleted answers "no such key": it is not ours either.
                if _error_code(exc) in _PRECONDITION_CODES or (token and _error_code(exc) in ("NoSuchKey", "404")):
                    return None
                raise
        return response["ETag"]

    def delete(self, token: str) -> None:
        with _s3_errors(self.uri, "release the run lease"):
            try:
                s3_client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=token)
            except Exception as exc:  # noqa: BLE001 - someone else holds it now: leave it
                if _error_code(exc) not in _PRECONDITION_CODES | {"NoSuchKey", "404"}:
                    raise


def _parse(data: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None  # damaged or foreign: treated as stale once it is older than the timeout


# ---------------------------------------------------------------------------- the lease


class RunLease:
    """Hold a run folder's lease while training; use as a context manager.

    Args:
        run_uri: the run folder (local or s3://).
        timeout_seconds: a heartbeat older than this marks the holder as gone.
        chain: attempt chain; drivers of one chain take over from each other at once.
        on_lost: called (from the heartbeat thread) if another driver took the lease.
    """

    def __init__(
        self,
        run_uri: str,
        timeout_seconds: float,
        chain: str | None = None,
        on_lost: Callable[[Holder | None], None] | None = None,
    ):
        self.run_uri = run_uri
        self.backend = _S3Backend(run_uri) if is_s3(run_uri) else _LocalBackend(run_uri)
        self.me = Holder(
            owner=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=_process_start(os.getpid()),
            chain=os.environ.get(CHAIN_ENV, "") if chain is None else chain,
            started=time.time(),
            timeout_seconds=float(timeout_seconds),
            boot_id=_boot_id(),
            pid_namespace=_pid_namespace(),
        )
        self.on_lost = on_lost
        self.lost: str | None = None  # why the lease was lost, once it was
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- taking it

    def _takeover_reason(self, seen: _Seen) -> str | None:
        holder = seen.holder
        if holder is None:
            return "its lease.json is unreadable" if seen.age_seconds > self.me.timeout_seconds else None
        if self.me.chain and holder.chain == self.me.chain:
            return f"it is an earlier attempt of the same chain ({holder.chain})"
        if seen.age_seconds > holder.timeout_seconds:
            return f"its last heartbeat is {seen.age_seconds:.0f} s old (timeout {holder.timeout_seconds:g} s)"
        if _gone_from_this_host(holder):
            return f"its process {holder.pid} on this host has exited"
        return None

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming the live holder."""
        body = json.dumps(asdict(self.me)).encode()
        for _ in range(5):
            seen = self.backend.read()
            if seen is None:
                self._token = self.backend.put(body, None)
            elif seen.holder is not None and seen.holder.owner == self.me.owner:
                self._token = seen.token  # our own write, answered as failed after a retried request
            else:
                reason = self._takeover_reason(seen)
                if reason is None:
                    raise self._held_error(seen)
                who = seen.holder.describe() if seen.holder else "an unknown holder"
                log.warning("taking over the lease of %s from %s: %s", self.run_uri, who, reason)
                self._token = self.backend.put(body, seen.token)
            if self._token is not None:
                log.info("holding the lease of %s (%s)", self.run_uri, self.me.describe())
                return
            time.sleep(0.2)  # another driver changed it between our read and write: look again
        raise LeaseHeld(f"Could not take the lease of {self.run_uri}: other drivers keep changing it.")

    def _held_error(self, seen: _Seen) -> LeaseHeld:
        holder = seen.holder
        if holder is None:
            left = max(0.0, self.me.timeout_seconds - seen.age_seconds)
            return LeaseHeld(
                f"{self.run_uri} has a {LEASE_FILE} this release cannot read, written {seen.age_seconds:.0f} s "
                f"ago: another run (perhaps of another version) may be using it. Wait, or choose another "
                f"--output; if no run is using it, it is taken over in {left:.0f} s."
            )
        left = max(0.0, holder.timeout_seconds - seen.age_seconds)
        return LeaseHeld(
            f"{self.run_uri} is in use by another run: {holder.describe()}, last heartbeat "
            f"{seen.age_seconds:.0f} s ago. Two runs on one --output would mix their checkpoints. "
            f"Wait for it to finish, or choose another --output; if that run is dead, its lease expires "
            f"in {left:.0f} s and the same command then resumes it."
        )

    # -------------------------------------------------------------- keeping it

    def _beat(self) -> None:
        interval = max(0.5, self.me.timeout_seconds / 4)
        body = json.dumps(asdict(self.me)).encode()
        renewed = time.monotonic()
        while not self._stop.wait(interval):
            try:
                token = self.backend.put(body, self._token)
            except (UserError, OSError) as exc:
                silent = time.monotonic() - renewed
                if silent <= self.me.timeout_seconds:  # a hiccup: the next beat tries again
                    log.warning("lease heartbeat of %s failed: %s", self.run_uri, exc)
                    continue
                # Others may take it over by now: behave as if it were taken.
                self._lost(None, f"no heartbeat could be written for {silent:.0f} s")
                return
            if token is None:
                try:
                    seen = self.backend.read()
                except (UserError, OSError):
                    seen = None
                holder = seen.holder if seen else None
                self._lost(holder, holder.describe() if holder else "nobody (it was deleted)")
                return
            self._token = token
            renewed = time.monotonic()

    def _lost(self, holder: Holder | None, why: str) -> None:
        log.error("lost the lease of %s (%s); stopping this run so that two runs do not mix", self.run_uri, why)
        self._token = None
        self.lost = why
        if self.on_lost:
            self.on_lost(holder)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._token is not None:
            with contextlib.suppress(UserError):  # an expired lease is harmless; the next run takes it
                self.backend.delete(self._token)
            self._token = None

    def __enter__(self) -> RunLease:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
