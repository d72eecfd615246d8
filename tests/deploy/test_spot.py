"""Spot-ready deployment (issue 15): a spot interruption becomes a Ray preemption, the alerts
that say when spot is not paying off, and Terraform that puts only the GPU workers on spot.

- Worker pods drain their own Ray node from a preStop hook (`python -m job drain
  --deadline-seconds N`) with a deadline that leaves time before SIGKILL; the head never does.
- `promtool test rules` runs the two spot alerts of k8s/monitoring/prometheusrule.yaml on
  synthetic series, firing and not firing.
- infra/: the GPU group's capacity type is a variable (ON_DEMAND by default, SPOT allowed),
  the system group (Ray head) is on-demand whatever it says.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import hcl2
import jsonschema
import pytest
import yaml

from job.cluster.drain import SLACK_SECONDS
from tests.cli import require, require_tool, run_command

from .helpers import REPO, SCHEMAS, TARGETS, containers, one, unquote
from .test_kubernetes import _crd_schema

# ------------------------------------------------------------------------------ preStop drain

DRAIN = ["python", "-m", "job", "drain"]
# Kubernetes' terminationGracePeriodSeconds when a pod spec gives none.
DEFAULT_GRACE_SECONDS = 30
# What the deadline must leave before SIGKILL: the hook waits up to this long past the deadline
# for Ray Train to move the workers, and the kubelet SIGKILLs at the grace period.
AFTER_DEADLINE_SECONDS = SLACK_SECONDS


def _prestop_command(container: dict[str, Any]) -> list[str] | None:
    return container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")


def drain_deadline(command: list[str]) -> int:
    """N of the exec command `python -m job drain --deadline-seconds N`.

    Raises ValueError for anything else: another program, a shell wrapper, a missing or
    unknown option, a deadline that is not a whole number of seconds.
    """
    if list(command[: len(DRAIN)]) != DRAIN:
        raise ValueError(f"not `{' '.join(DRAIN)} ...`: {command}")
    parser = argparse.ArgumentParser(prog=" ".join(DRAIN), add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--deadline-seconds", type=int, required=True)
    try:
        args = parser.parse_args([str(a) for a in command[len(DRAIN) :]])
    except (argparse.ArgumentError, SystemExit) as exc:  # argparse exits on unknown/missing options
        raise ValueError(f"{command} does not parse as `{' '.join(DRAIN)} --deadline-seconds N`") from exc
    return args.deadline_seconds


def prestop_problems(rayjob: dict[str, Any]) -> list[str]:
    """What is wrong with the RayJob's drain hooks (an empty list when nothing is)."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    problems = []
    for c in containers(cluster["headGroupSpec"]["template"]):
        command = _prestop_command(c)
        if command and "drain" in " ".join(map(str, command)):  # exec form or through a shell
            problems.append(f"head container {c['name']} drains itself in preStop: {command}")
    groups = cluster.get("workerGroupSpecs", [])
    if not groups:
        problems.append("the RayJob has no worker group")
    for group in groups:
        spec = group["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        for c in spec["containers"]:
            where = f"worker group {group['groupName']} container {c['name']}"
            command = _prestop_command(c)
            if not command:
                problems.append(f"{where} has no preStop exec command")
                continue
            try:
                deadline = drain_deadline(command)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if not 0 < deadline <= grace - AFTER_DEADLINE_SECONDS:
                problems.append(
                    f"{where}: drain deadline {deadline} s is not in (0, terminationGracePeriodSeconds "
                    f"{grace} - {AFTER_DEADLINE_SECONDS}]"
                )
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_worker_pods_drain_their_ray_node_before_sigkill_and_the_head_does_not(rendered, target):
    rayjob = one(rendered[target], "RayJob")
    assert prestop_problems(rayjob) == []
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    # The deadline actually checked: 75 s of a 90 s grace period.
    deadlines = [drain_deadline(_prestop_command(c)) for g in groups for c in g["template"]["spec"]["containers"]]
    assert deadlines == [75] * len(groups)


def _with(rayjob: dict[str, Any], change) -> dict[str, Any]:
    broken = copy.deepcopy(rayjob)
    change(broken["spec"]["rayClusterSpec"])
    return broken


def _worker(cluster: dict[str, Any]) -> dict[str, Any]:
    return cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def _set_command(cluster: dict[str, Any], command: list[str]) -> None:
    _worker(cluster)["lifecycle"]["preStop"]["exec"]["command"] = command


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: _set_command(c, [*DRAIN, "--deadline-seconds", "90"]), id="deadline-at-sigkill"),
        pytest.param(lambda c: _set_command(c, [*DRAIN, "--deadline-seconds", "81"]), id="deadline-within-10s"),
        pytest.param(lambda c: _set_command(c, [*DRAIN, "--deadline-seconds", "0"]), id="deadline-zero"),
        pytest.param(lambda c: _set_command(c, [*DRAIN, "--deadline-seconds", "7.5"]), id="deadline-not-int"),
        pytest.param(lambda c: _set_command(c, [*DRAIN, "--deadline", "75"]), id="unknown-option"),
        pytest.param(lambda c: _set_command(c, DRAIN), id="no-deadline"),
        pytest.param(lambda c: _set_command(c, ["sh", "-c", "python -m job drain --deadline-seconds 75"]), id="shell"),
        pytest.param(lambda c: _set_command(c, ["python", "-m", "job", "train", "--deadline-seconds", "75"]), id="cmd"),
        pytest.param(lambda c: _worker(c).pop("lifecycle"), id="no-hook"),
        pytest.param(
            lambda c: c["workerGroupSpecs"][0]["template"]["spec"].pop("terminationGracePeriodSeconds"),
            id="default-grace-30s",
        ),
        pytest.param(
            lambda c: c["headGroupSpec"]["template"]["spec"]["containers"][0].update(
                lifecycle=copy.deepcopy(_worker(c)["lifecycle"])
            ),
            id="head-drains-itself",
        ),
    ],
)
def test_the_drain_check_fails_a_broken_hook(rendered, change):
    """The check above must be able to fail, once for each way the hook can be wrong."""
    rayjob = one(rendered["base"], "RayJob")
    assert prestop_problems(rayjob) == []
    assert prestop_problems(_with(rayjob, change))


def test_the_crd_schema_checks_the_hook_and_the_grace_period(rendered):
    """tests/deploy/test_kubernetes.py validates the rendered RayJob against KubeRay's CRD; a
    misspelt hook or grace period would be dropped by the API server, so it must fail there."""
    require(SCHEMAS.is_dir(), f"CRD schemas not found at {SCHEMAS}")
    validator = jsonschema.Draft7Validator(_crd_schema("RayJob"))
    rayjob = one(rendered["aws"], "RayJob")
    assert not list(validator.iter_errors(rayjob))

    def misspell(cluster):
        spec = cluster["workerGroupSpecs"][0]["template"]["spec"]
        spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
        _worker(cluster)["lifecycle"]["preStopp"] = _worker(cluster)["lifecycle"].pop("preStop")

    paths = {"/".join(map(str, e.absolute_path)) for e in validator.iter_errors(_with(rayjob, misspell))}
    assert paths == {
        "spec/rayClusterSpec/workerGroupSpecs/0/template/spec",
        "spec/rayClusterSpec/workerGroupSpecs/0/template/spec/containers/0/lifecycle",
    }


# ------------------------------------------------------------------------------ alerts

PROMETHEUS_RULE = REPO / "k8s" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = REPO / "k8s" / "monitoring" / "dashboards" / "multilabel-training.json"
SPOT_ALERTS = ("MultilabelPreemptedOften", "MultilabelCheckpointUploadBacklog")


def _rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())
    return {r["alert"]: r for g in doc["spec"]["groups"] for r in g["rules"] if "alert" in r}


def _series(metric: str, values: list[float] | str, /, **labels: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    text = values if isinstance(values, str) else " ".join(f"{v:g}" for v in values)
    return {"series": f"{metric}{{{body}}}", "values": text}


def _alerts(at: str, name: str, *label_sets: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": dict(ls)} for ls in label_sets]}


def _counter(minutes: int, every: int, first: int) -> list[float]:
    """One sample per minute of a counter that goes up by 1 at minute `first`, then every `every`."""
    return [0 if m < first else 1 + (m - first) // every for m in range(minutes + 1)]


def test_spot_alerts_fire_when_they_should_and_only_then(tmp_path):
    """`promtool test rules` on synthetic series (1 sample per minute, rules evaluated every
    30 s). Annotations are stripped from a copy of the rules, so the test checks the alert logic."""
    promtool = require_tool("promtool")
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(doc))

    # "spotty": preempted at minutes 10, 20, 30, 40: the 4th within the hour fires.
    # "calm": one every 25 minutes: at most 3 in any hour (increase() reads 3 as ~3.05), never.
    preemptions = [
        _series("multilabel_preemptions_total", _counter(120, 10, 10)[:46] + [4] * 75, run="spotty"),
        _series("multilabel_preemptions_total", _counter(180, 25, 5), run="calm"),
    ]
    # rank 0's queue holds 2 uploads from minute 5 on; rank 1's rises to 2 and drains every
    # 10 minutes (uploads slow but keeping up); rank 2 has always one upload in flight.
    queue = [
        _series("multilabel_checkpoint_upload_queue", "0x4 2x40", run="r", rank="0"),
        _series("multilabel_checkpoint_upload_queue", "0 1 2 2 2 2 2 2 2 2 " * 4 + "0 0 0 0 0", run="r", rank="1"),
        _series("multilabel_checkpoint_upload_queue", "1x44", run="r", rank="2"),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": preemptions,
            "alert_rule_test": [
                _alerts("35m", "MultilabelPreemptedOften"),  # spotty: 3 so far
                _alerts("41m", "MultilabelPreemptedOften", {"run": "spotty", "severity": "warning"}),
                _alerts("60m", "MultilabelPreemptedOften", {"run": "spotty", "severity": "warning"}),
                # spotty: only minute 40's is left in the hour. calm: 3 in the hour (55, 80, 105);
                # between scrapes increase() extrapolates them to about 3.05.
                _alerts("95m", "MultilabelPreemptedOften"),
                _alerts("110m", "MultilabelPreemptedOften"),
                _alerts("110m30s", "MultilabelPreemptedOften"),
                _alerts("160m30s", "MultilabelPreemptedOften"),  # calm: 105, 130, 155
            ],
        },
        {
            "interval": "1m",
            "input_series": queue,
            "alert_rule_test": [
                _alerts("19m", "MultilabelCheckpointUploadBacklog"),  # pending (for: 15m)
                _alerts("21m", "MultilabelCheckpointUploadBacklog", {"run": "r", "rank": "0", "severity": "warning"}),
                _alerts("44m", "MultilabelCheckpointUploadBacklog", {"run": "r", "rank": "0", "severity": "warning"}),
            ],
        },
    ]
    test_file = tmp_path / "rules_test.yml"
    # Rules are evaluated between scrapes, as in a real Prometheus: then increase() extrapolates.
    spec = {"rule_files": [str(rules)], "evaluation_interval": "30s", "tests": tests}
    test_file.write_text(yaml.safe_dump(spec))
    result = run_command([promtool, "test", "rules", str(test_file)], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_spot_alerts_tell_the_reader_what_to_do():
    rules = _rules()
    assert set(SPOT_ALERTS) <= set(rules)
    for name in SPOT_ALERTS:
        assert rules[name]["labels"]["severity"] == "warning", name
        assert len(rules[name]["annotations"]["description"].split()) >= 25, name
    often = rules["MultilabelPreemptedOften"]
    assert "increase(multilabel_preemptions_total[1h])" in often["expr"]
    text = often["annotations"]["description"]
    for needle in ("spot", "instance type", "zone", "ON_DEMAND"):
        assert needle in text, needle
    backlog = rules["MultilabelCheckpointUploadBacklog"]
    assert backlog["for"] == "15m" and "multilabel_checkpoint_upload_queue" in backlog["expr"]
    for needle in ("throughput", "checkpoint.every_steps"):
        assert needle in backlog["annotations"]["description"], needle


def test_dashboard_shows_restarts_by_cause_world_size_and_upload_queue():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"]}
    assert exprs["Worker restarts"] == ['sum by (run, cause) (multilabel_worker_restarts_total{run=~"$run"})']
    assert any("multilabel_world_size" in e for e in exprs["World size"])
    assert any("multilabel_checkpoint_upload_queue" in e for e in exprs["Checkpoint upload queue"])
    # New panels sit below the existing ones, not on top of them.
    boxes = [p["gridPos"] for p in dashboard["panels"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            overlap_x = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            overlap_y = a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
            assert not (overlap_x and overlap_y), (a, b)


# ------------------------------------------------------------------------------ Terraform

INFRA = REPO / "infra"
DEV = INFRA / "envs" / "dev"
EKS = INFRA / "modules" / "eks"


def _hcl(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f)


def _variables(folder: Path) -> dict[str, dict[str, Any]]:
    return {unquote(n): b for e in _hcl(folder / "variables.tf").get("variable", []) for n, b in e.items()}


def _node_groups() -> dict[str, dict[str, Any]]:
    return {
        unquote(n): b
        for e in _hcl(EKS / "main.tf").get("resource", [])
        for t, named in e.items()
        if unquote(t) == "aws_eks_node_group"
        for n, b in named.items()
    }


def _dev_eks_args() -> dict[str, Any]:
    return next(b for e in _hcl(DEV / "main.tf")["module"] for n, b in e.items() if unquote(n) == "eks")


def test_gpu_capacity_type_is_on_demand_by_default_and_reaches_the_gpu_group():
    for folder in (DEV, EKS):
        variable = _variables(folder)["gpu_capacity_type"]
        assert unquote(variable["type"]).strip("${}") == "string", folder
        assert unquote(variable["default"]) == "ON_DEMAND", f"{folder.relative_to(REPO)}: default"
        assert variable.get("validation"), f"{folder.relative_to(REPO)}: a typo (spot, Spot) must fail at plan"
    args = _dev_eks_args()
    assert unquote(args["gpu_capacity_type"]) == "${var.gpu_capacity_type}"
    # The whole list goes through: on SPOT, EKS draws from every type given.
    assert unquote(args["gpu_instance_types"]) == "${var.gpu_instance_types}"
    gpu = _node_groups()["gpu"]
    assert unquote(gpu["capacity_type"]) == "${var.gpu_capacity_type}"
    assert unquote(gpu["instance_types"]) == "${var.gpu_instance_types}"
    example = _hcl(DEV / "terraform.tfvars.example")
    assert unquote(example.get("gpu_capacity_type", "ON_DEMAND")) == "ON_DEMAND"


def test_system_group_with_the_ray_head_is_on_demand_whatever_the_variable_says():
    groups = _node_groups()
    assert set(groups) == {"system", "gpu"}
    # A literal, not an expression (python-hcl2 keeps a literal's quotes and writes an
    # expression as ${...}): no variable can put the head on spot.
    assert groups["system"]["capacity_type"] == '"ON_DEMAND"'
    for folder in (DEV, EKS):
        assert [v for v in _variables(folder) if "capacity" in v] == ["gpu_capacity_type"], folder


def _terraform_values(tmp_path: Path, folder: Path, **values: Any) -> dict[str, Any] | str:
    """Apply `folder`'s variables.tf alone (no providers, nothing created) with `values`;
    returns the variables' values, or terraform's error text when validation refuses them."""
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.skip("terraform is not installed; variable validation could not run")
    work = tmp_path / folder.name
    work.mkdir(parents=True)
    shutil.copy(folder / "variables.tf", work / "variables.tf")
    names = ("gpu_capacity_type", "gpu_instance_types")
    (work / "outputs.tf").write_text("".join(f'output "{n}" {{\n  value = var.{n}\n}}\n' for n in names))
    required = {n: ["203.0.113.0/24"] for n, v in _variables(folder).items() if "default" not in v}
    for name, spec in _variables(folder).items():
        if "default" not in spec and unquote(spec["type"]).strip("${}") == "string":
            required[name] = "x"
    (work / "terraform.tfvars.json").write_text(json.dumps({**required, **values}))
    env = {"TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    for argv in (["init", "-backend=false"], ["apply", "-auto-approve"]):
        proc = run_command([terraform, *argv, "-input=false", "-no-color"], cwd=work, env=env, timeout=120)
        if proc.returncode != 0:
            return proc.stdout + proc.stderr
    proc = run_command([terraform, "output", "-json"], cwd=work, env=env, timeout=60, check=True)
    return {k: v["value"] for k, v in json.loads(proc.stdout).items()}


@pytest.mark.parametrize("folder", [DEV, EKS], ids=["envs/dev", "modules/eks"])
def test_terraform_takes_spot_with_several_instance_types_and_refuses_other_values(tmp_path, folder):
    default = _terraform_values(tmp_path / "default", folder)
    assert isinstance(default, dict), default
    assert default["gpu_capacity_type"] == "ON_DEMAND"
    types = ["g5.2xlarge", "g5.4xlarge"]
    spot = _terraform_values(tmp_path / "spot", folder, gpu_capacity_type="SPOT", gpu_instance_types=types)
    assert spot == {"gpu_capacity_type": "SPOT", "gpu_instance_types": types}
    refused = _terraform_values(tmp_path / "typo", folder, gpu_capacity_type="spot")
    assert isinstance(refused, str) and "gpu_capacity_type must be ON_DEMAND or SPOT" in refused, refused
