"""docker-compose.yml agrees with the code, the monitoring files and docs/watching.md.

No Docker engine runs here, so the file is checked as data: the services a user starts from
the docs exist, ports and the bucket match what the docs and the job use, every mounted file
exists, and no credential is written in the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from job.config import DEFAULT_DRIVER_PORT, DEFAULT_WORKER_PORT_BASE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
WATCHING = ROOT / "docs" / "watching.md"
BUCKET = "multilabel"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def published(service: dict) -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port) for ports written as "[ip:]host:container"."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        out[int(parts[-1])] = (ip, int(parts[-2]))
    return out


def mounts(service: dict) -> dict[str, str]:
    """container path -> host path for the bind mounts (relative to the compose file)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = str(spec).split(":")[:2]
        if source.startswith("."):
            out[target] = source
    return out


def test_the_services_the_docs_start_exist(services):
    assert set(services) == {"minio", "minio-init", "prometheus", "grafana"}
    docs = WATCHING.read_text()
    started = re.findall(r"docker compose up -d ([\w\- ]+)", docs)
    assert "minio minio-init prometheus grafana" in [s.strip() for s in started]
    for line in started:
        assert set(line.split()) <= set(services), line


def test_images_are_pinned(services):
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
    assert re.search(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z$", services["minio"]["image"])
    assert re.search(r"minio/mc:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z$", services["minio-init"]["image"])


def test_minio_ports_match_the_documented_endpoint(services):
    ports = published(services["minio"])
    assert ports[9000] == ("127.0.0.1", 9000)
    assert ports[9001] == ("127.0.0.1", 9001)
    docs = WATCHING.read_text()
    assert "S3_ENDPOINT_URL=http://localhost:9000" in docs
    assert "http://localhost:9001" in docs
    assert published(services["prometheus"])[9090][1] == 9090 and "http://localhost:9090" in docs
    assert published(services["grafana"])[3000][1] == 3000 and "http://localhost:3000" in docs


def test_credentials_come_from_the_environment_only(services):
    text = COMPOSE.read_text()
    for name in ("minio", "minio-init"):
        env = services[name]["environment"]
        assert env["MINIO_ROOT_USER"].startswith("${MINIO_ROOT_USER:?")
        assert env["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ROOT_USER|ACCESS_KEY", key):
                assert str(value).startswith("${"), f"{key} must come from the environment"
    assert "minioadmin" not in text


def test_minio_init_waits_for_a_healthy_minio_and_creates_the_bucket(services):
    assert services["minio"]["healthcheck"]["test"]
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    command = " ".join(init["command"])
    assert "http://minio:9000" in command
    assert re.search(rf"mc mb --ignore-existing local/{BUCKET}\b", command)
    assert "$$MINIO_ROOT_PASSWORD" in command  # expanded in the container, not by compose


def test_local_minio_recipe_uses_the_bucket_and_the_storage_env_names():
    docs = WATCHING.read_text()
    recipe = next(line for line in docs.splitlines() if "python -m job demo" in line)
    assert f"--bucket {BUCKET}" in recipe
    for name in (
        "S3_ENDPOINT_URL=http://localhost:9000",
        "AWS_ACCESS_KEY_ID=$MINIO_ROOT_USER",
        "AWS_SECRET_ACCESS_KEY=$MINIO_ROOT_PASSWORD",
        "AWS_REGION=",
    ):
        assert name in recipe
    assert "export MINIO_ROOT_USER=" in docs and "MINIO_ROOT_PASSWORD=" in docs


def test_prometheus_mounts_existing_files_and_scrapes_the_job_ports(services):
    prom = services["prometheus"]
    bound = mounts(prom)
    for target, source in bound.items():
        assert (ROOT / source).is_file(), f"{source} (mounted at {target}) does not exist"
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_in_container = config_flag.split("=", 1)[1]
    assert bound[config_in_container] == "./monitoring/prometheus.yml"
    config = yaml.safe_load((ROOT / bound[config_in_container]).read_text())
    for rule_file in config["rule_files"]:  # resolved against the config's folder in the container
        in_container = str(Path(config_in_container).parent / rule_file)
        assert in_container in bound, f"rule file {rule_file} is not mounted"
        assert (ROOT / bound[in_container]).is_file()
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    expected_ports = {DEFAULT_DRIVER_PORT, DEFAULT_WORKER_PORT_BASE, DEFAULT_WORKER_PORT_BASE + 1}
    assert targets == {f"host.docker.internal:{p}" for p in expected_ports}
    assert "host.docker.internal:host-gateway" in prom["extra_hosts"]


def test_grafana_provisions_the_datasource_and_the_dashboard(services):
    grafana = services["grafana"]
    bound = mounts(grafana)
    for target, source in bound.items():
        assert (ROOT / source).exists(), f"{source} (mounted at {target}) does not exist"
    datasources = yaml.safe_load((ROOT / bound["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text())
    ds = datasources["datasources"][0]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"  # the compose service name and its port
    providers = yaml.safe_load((ROOT / bound["/etc/grafana/provisioning/dashboards"] / "multilabel.yml").read_text())
    dashboard_dir = providers["providers"][0]["options"]["path"]
    assert (ROOT / bound[dashboard_dir] / "multilabel-training.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboard_dir}/multilabel-training.json"
