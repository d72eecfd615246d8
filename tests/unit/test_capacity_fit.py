"""The pre-training check that the workers fit on a running Ray cluster (job/cluster/capacity.py)."""

from __future__ import annotations

import pytest

from job.cluster.capacity import shortfall, wait_until_workers_fit
from job.config import ScalingConfig
from job.errors import UserError

HEAD = {"memory": 2e9}  # KubeRay head with num-cpus 0: no CPU, no GPU


def _scaling(**kw) -> ScalingConfig:
    return ScalingConfig(**{"num_workers": 2, "cpus_per_worker": 1.0, **kw})


def test_local_overlay_pods_fit_two_workers_and_ray_data():
    assert shortfall([HEAD, {"CPU": 2.0}, {"CPU": 2.0}], _scaling()) is None


def test_worker_pods_with_one_cpu_each_leave_ray_data_nothing():
    problem = shortfall([HEAD, {"CPU": 1.0}, {"CPU": 1.0}], _scaling())
    assert problem is not None and "Ray Data" in problem


def test_on_the_direct_ingest_path_workers_may_take_every_cpu():
    # The workers read and decode their own input: no Ray Data tasks need CPUs beside them.
    assert shortfall([HEAD, {"CPU": 1.0}, {"CPU": 1.0}], _scaling(), data_cpus=0.0) is None


def test_gpu_workers_need_gpu_nodes():
    problem = shortfall([HEAD, {"CPU": 8.0}, {"CPU": 8.0}], _scaling(use_gpu=True, cpus_per_worker=4.0))
    assert problem is not None and "0 of 2" in problem and "1 GPU" in problem


def test_one_gpu_node_holds_one_of_two_gpu_workers():
    nodes = [HEAD, {"CPU": 8.0, "GPU": 1.0}]
    problem = shortfall(nodes, _scaling(use_gpu=True, cpus_per_worker=4.0))
    assert problem is not None and "only 1 of 2" in problem
    assert shortfall(nodes + [{"CPU": 8.0, "GPU": 1.0}], _scaling(use_gpu=True, cpus_per_worker=4.0)) is None


def test_waits_for_an_autoscaler_then_proceeds():
    answers = iter([[HEAD], [HEAD, {"CPU": 2.0}], [HEAD, {"CPU": 2.0}, {"CPU": 2.0}]])
    asked, now = [], [0.0]
    wait_until_workers_fit(
        _scaling(),
        alive_nodes=lambda: next(answers),
        request_resources=asked.append,
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
    )
    assert asked == [[{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]]


def test_gives_up_after_the_timeout_with_the_numbers():
    now = [0.0]
    with pytest.raises(UserError) as err:
        wait_until_workers_fit(
            _scaling(resources_timeout_seconds=30),
            alive_nodes=lambda: [HEAD, {"CPU": 1.0}, {"CPU": 1.0}],
            request_resources=lambda b: None,
            sleep=lambda s: now.__setitem__(0, now[0] + s),
            clock=lambda: now[0],
        )
    message = str(err.value)
    assert "1 CPU; 1 CPU" in message and "scaling.resources_timeout_seconds" in message
    assert now[0] == pytest.approx(30.0)


def test_a_worker_node_resource_keeps_two_workers_off_one_node():
    s = _scaling(worker_node_resource="multilabel_worker")
    one_node = [HEAD, {"CPU": 4.0, "multilabel_worker": 1.0}]
    assert "only 1 of 2 training workers fit" in shortfall(one_node, s)
    assert shortfall(one_node + [{"CPU": 2.0, "multilabel_worker": 1.0}], s) is None
