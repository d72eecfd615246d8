"""One live driver per run folder: the run lease on local disk and on the embedded S3 server.

The lease API is tried on both backends with real processes and threads (a racing pair, a
SIGKILLed holder, a holder that stops beating, a takeover within one attempt chain). Then
two real `train --local` commands on one --output: the second is refused naming the first;
after the first is SIGKILLed on "another host" (its own UTS namespace, as a pod would be),
the lease is refused until its timeout and then taken over, and the run resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time

import pytest

from job import storage
from job.storage.lease import LEASE_FILE, LeaseHeld, RunLease
from tests.cli import assert_clean_error, kill_group, require, run_cli, run_command, start_cli

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/runs/leased"


def test_a_live_holder_is_named_and_the_lease_is_free_after_release(run_uri):
    with RunLease(run_uri, timeout_seconds=30):
        with pytest.raises(LeaseHeld) as info:
            RunLease(run_uri, timeout_seconds=30).acquire()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and "last heartbeat" in message and "another --output" in message
    assert not storage.exists(storage.join(run_uri, LEASE_FILE))
    second = RunLease(run_uri, timeout_seconds=30)
    second.acquire()
    second.release()


def test_two_drivers_racing_for_a_free_lease_cannot_both_win(run_uri):
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def contend():
        lease = RunLease(run_uri, timeout_seconds=30)
        start.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]


def test_a_lease_whose_heartbeat_stopped_is_taken_over_after_its_timeout(run_uri):
    stuck = RunLease(run_uri, timeout_seconds=2)
    stuck.acquire()  # no heartbeat thread: like a driver that hangs or lost its network
    with pytest.raises(LeaseHeld):
        RunLease(run_uri, timeout_seconds=2).acquire()
    time.sleep(3)
    taker = RunLease(run_uri, timeout_seconds=2)
    taker.acquire()
    assert json.loads(storage.read_bytes(storage.join(run_uri, LEASE_FILE)))["owner"] == taker.me.owner
    taker.release()


def test_a_holder_learns_it_lost_the_lease_to_its_own_chain(run_uri):
    lost = threading.Event()
    with RunLease(run_uri, timeout_seconds=4, chain="ns/job", on_lost=lambda holder: lost.set()) as old:
        retry = RunLease(run_uri, timeout_seconds=30, chain="ns/job")
        retry.acquire()  # the same attempt chain (a KubeRay retry): at once, no waiting
        assert lost.wait(15), "the old holder kept writing after its lease was taken"
        assert old.lost and retry.me.owner[:8] in old.lost
        with pytest.raises(LeaseHeld):
            RunLease(run_uri, timeout_seconds=30, chain="ns/other").acquire()
        retry.release()


def test_a_holder_whose_lease_was_deleted_learns_it_lost_it(run_uri):
    lost = threading.Event()
    with RunLease(run_uri, timeout_seconds=4, on_lost=lambda holder: lost.set()) as lease:
        storage.delete(storage.join(run_uri, LEASE_FILE))  # a careless cleanup script
        assert lost.wait(15), "the holder kept running without a lease"
        assert "deleted" in lease.lost


def test_the_lease_of_a_killed_process_on_this_host_is_taken_at_once(run_uri):
    holder = "from job.storage.lease import RunLease; import os, signal; RunLease(os.environ['RUN'], 600).acquire(); "
    result = run_command(
        [sys.executable, "-c", holder + "os.kill(os.getpid(), signal.SIGKILL)"], env={"RUN": run_uri}, timeout=120
    )
    assert result.returncode == -9, result.stderr[-2000:]
    assert storage.exists(storage.join(run_uri, LEASE_FILE))
    lease = RunLease(run_uri, timeout_seconds=600)
    lease.acquire()  # not 600 s later: its process is provably gone
    lease.release()


# ---------------------------------------------------------------------------- two train commands

CONFIG = "configs/demo.yaml"
FAST = ["--set", "model.width=8", "--set", "data.batch_size_per_worker=16", "--set", "telemetry.enabled=false"]
LEASE_TIMEOUT = 10


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("data") / "synth"
    run_cli("synth", "--out", str(out), "--num-images", "240", "--quiet", timeout=180, check=True)
    return str(out)


def test_a_second_train_on_one_output_is_refused_and_a_dead_runs_lease_is_taken_over(data_dir, tmp_path):
    require(os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare for a second host name")
    run = tmp_path / "run"
    train = ["train", "--local", "--config", CONFIG, "--data", data_dir, "--output", str(run), *FAST]
    settings = ["--set", f"lease_timeout_seconds={LEASE_TIMEOUT}", "--set", "training.epochs=3"]
    # The first run on "another host": its own host name, as a pod's driver has.
    other_host = ["unshare", "--uts", "sh", "-c", 'hostname other-host && exec "$@"', "sh"]
    first = start_cli(*train, *settings, "--set", "training.epochs=60", prefix=other_host)
    checkpoint = run / "checkpoint_epoch-000001" / "manifest.json"
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert checkpoint.exists(), "the first run wrote no checkpoint"
        config_before = (run / "config.json").read_text()

        started = time.monotonic()
        second = run_cli(*train, *settings, timeout=120)
        seconds = time.monotonic() - started
        print(f"second train refused after {seconds:.1f} s")
        assert second.returncode == 1, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert re.match(r"error: \S+ is in use by another run: owner \w+ on host other-host \(pid \d+\)", last), last
        assert "Epoch" not in second.stdout + second.stderr
        assert (run / "config.json").read_text() == config_before, "the refused run wrote into the first run"
        assert first.poll() is None, "the first run stopped"
    finally:
        kill_group(first)

    # SIGKILLed on another host: nothing says it is dead but its silence. (Asked in-process:
    # a second `train` needs longer than the timeout to import TensorFlow on a loaded machine.)
    with pytest.raises(LeaseHeld, match="expires in"):
        RunLease(str(run), timeout_seconds=LEASE_TIMEOUT).acquire()
    time.sleep(LEASE_TIMEOUT + 1)
    done = max(int(p.name.rsplit("-", 1)[1]) for p in run.glob("checkpoint_epoch-*") if (p / "manifest.json").exists())
    taken = run_cli(*train, *settings, "--set", f"training.epochs={done + 1}", timeout=400)
    out = taken.stdout + taken.stderr
    assert taken.returncode == 0, out[-3000:]
    assert re.search(r"taking over the lease of \S+ from owner \w+ on host other-host .*heartbeat is \d+ s old", out)
    assert re.search(r"resuming from \S+checkpoint_epoch-\d+", out), out[-2000:]
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == list(range(1, done + 2))
    assert not (run / LEASE_FILE).exists(), "a finished run keeps its lease"


def test_evaluate_into_a_run_that_is_training_is_refused(tmp_path):
    run = str(tmp_path / "run")
    with RunLease(run, timeout_seconds=30):  # as a running `train` holds it
        result = run_cli("evaluate", "--run", run, timeout=120)
    assert_clean_error(result, "is in use by another run", f"pid {os.getpid()}")


def test_a_run_that_loses_its_lease_stops_with_one_error_line(data_dir, tmp_path):
    run = tmp_path / "run"
    train = ["train", "--local", "--config", CONFIG, "--data", data_dir, "--output", str(run), *FAST]
    first = start_cli(*train, "--set", "training.epochs=200", "--set", "lease_timeout_seconds=4",
                      env={"JOB_RUN_CHAIN": "ns/job"})  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(run.glob("checkpoint_epoch-*/manifest.json")) and time.monotonic() < deadline:
            assert first.poll() is None, "the run ended early"
            time.sleep(0.5)
        retry = RunLease(str(run), timeout_seconds=30, chain="ns/job")
        retry.acquire()  # a newer attempt of the same chain takes over
        out, _ = first.communicate(timeout=120)
    finally:
        kill_group(first)
    retry.release()
    assert first.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: This run lost the lease of") and "Give each run its own --output" in last, last
    assert not (run / "metrics.json").exists(), "the stopped run wrote results"


def test_resuming_on_a_rewritten_data_set_is_refused(tmp_path):
    data, run = str(tmp_path / "data"), tmp_path / "run"
    synth = ["synth", "--out", data, "--num-images", "120", "--quiet"]
    run_cli(*synth, timeout=180, check=True)
    train = ["train", "--local", "--config", CONFIG, "--data", data, "--output", str(run), *FAST]
    run_cli(*train, "--set", "training.epochs=1", timeout=300, check=True)
    run_cli(*synth, "--seed", "7", "--overwrite", timeout=180, check=True)
    result = run_cli(*train, "--set", "training.epochs=2", timeout=300)
    assert_clean_error(result, "was re-written since this run started", "another --output")
