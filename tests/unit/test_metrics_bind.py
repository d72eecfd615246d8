"""Who can reach /metrics: a local run only from this machine, a pod or cluster run from others.

Checked with real connections to this machine's loopback and to one of its non-loopback
addresses: a server on 127.0.0.1 refuses a connection to the other address even from here.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import urllib.request

import pytest

from job.config import ConfigError, load_config
from job.telemetry import DriverTelemetry, WorkerTelemetry
from tests.prometheus_server import free_port


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine other than loopback (`hostname -I`, else the address a
    UDP socket would send from), verified by binding to it; None if the machine has none."""
    candidates: list[str] = []
    try:
        candidates += subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pass
    for probe in ("192.0.2.1", "10.255.255.255", "172.16.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((probe, 9))  # UDP: no packet is sent, only a route is chosen
                candidates.append(sock.getsockname()[0])
            except OSError:
                pass
    for text in candidates:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.version != 4 or ip.is_loopback or ip.is_unspecified or ip.is_link_local:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((text, 0))  # it is one of ours
            except OSError:
                continue
        return text
    return None


@pytest.fixture(scope="module")
def other_address() -> str:
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect to")
    return address


@pytest.fixture
def laptop_env(monkeypatch):
    """The environment of `train --local` on a laptop: not in a pod, no Ray cluster to join."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return monkeypatch


def reachable(host: str, port: int) -> bool:
    """True if /metrics answers on host:port, False if the connection is refused."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:  # noqa: S310
            return b"multilabel_" in resp.read()
    except ConnectionRefusedError:
        return False
    except OSError as exc:  # urllib wraps the refusal in URLError
        if isinstance(getattr(exc, "reason", None), ConnectionRefusedError):
            return False
        raise


@pytest.mark.parametrize("make", [WorkerTelemetry, DriverTelemetry], ids=["worker", "driver"])
def test_a_local_run_serves_metrics_on_loopback_only(laptop_env, other_address, make):
    port = free_port()
    # As job/launch/local.py and a driver that starts its own Ray create them: the default "auto".
    telemetry = make("r", 0, port) if make is WorkerTelemetry else make("r", port)
    try:
        assert telemetry.port == port
        assert telemetry.bind_address == "127.0.0.1"
        assert reachable("127.0.0.1", port)
        assert not reachable(other_address, port)
    finally:
        telemetry.close()


@pytest.mark.parametrize(
    "variable,value",
    [("KUBERNETES_SERVICE_HOST", "10.96.0.1"), ("RAY_ADDRESS", "10.0.0.5:6379")],
    ids=["kubernetes-pod", "ray-cluster"],
)
def test_in_a_pod_or_on_a_ray_cluster_metrics_are_reachable_from_other_machines(
    laptop_env, other_address, variable, value
):
    laptop_env.setenv(variable, value)
    port = free_port()
    worker = WorkerTelemetry("r", 0, port)
    try:
        assert worker.bind_address == "0.0.0.0"
        assert reachable(other_address, port)
        assert reachable("127.0.0.1", port)
    finally:
        worker.close()


def test_the_config_key_sets_the_address(laptop_env, other_address):
    cfg = load_config(None, ["telemetry.bind_address=0.0.0.0"])
    port = free_port()
    worker = WorkerTelemetry("r", 0, port, bind_address=cfg.telemetry.bind_address)
    try:
        assert reachable(other_address, port)
    finally:
        worker.close()


def test_an_explicit_loopback_stays_loopback_in_a_pod(laptop_env, other_address):
    laptop_env.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    port = free_port()
    driver = DriverTelemetry("r", port, bind_address="127.0.0.1")
    try:
        assert reachable("127.0.0.1", port)
        assert not reachable(other_address, port)
    finally:
        driver.close()


def test_the_config_key_defaults_to_auto_and_refuses_what_is_not_an_ip():
    assert load_config().telemetry.bind_address == "auto"
    assert load_config(None, ["telemetry.bind_address=127.0.0.1"]).telemetry.bind_address == "127.0.0.1"
    assert load_config(None, ['telemetry.bind_address="::"']).telemetry.bind_address == "::"
    for bad in ("localhost", "0.0.0.0:9400", "300.1.1.1", "", "10.0"):
        with pytest.raises(ConfigError, match="telemetry.bind_address must be auto or an IP address"):
            load_config(None, [f"telemetry.bind_address={bad}"])
    with pytest.raises(ConfigError, match="quote an IPv6 address"):
        load_config(None, ["telemetry.bind_address=::"])


def test_an_address_that_cannot_be_bound_is_a_warning_not_a_failure(caplog):
    port = free_port()
    with caplog.at_level("WARNING", logger="job.telemetry"):
        worker = WorkerTelemetry("r", 0, port, bind_address="203.0.113.254")  # TEST-NET: not ours
    try:
        assert worker.port is None
        assert "203.0.113.254" in caplog.text and "continues" in caplog.text
        worker.record_step(0.1, 8, 0.0)
    finally:
        worker.close()
