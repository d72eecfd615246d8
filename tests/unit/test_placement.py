"""`scaling.placement_strategy`: validated by the config and handed to Ray Train's ScalingConfig.

The k8s training configs set SPREAD so that each Ray Train worker gets its own worker pod
(Ray's default, PACK, may put both workers of the local overlay into one pod).
"""

from __future__ import annotations

import dataclasses
import os
import types

import pytest

from job.config import PLACEMENT_STRATEGIES, ConfigError, config_from_dict, load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S_CONFIGS = ["k8s/base/train-config.yaml", "k8s/overlays/local/train-config.yaml"]


def test_default_is_ray_default_pack():
    assert config_from_dict({}).scaling.placement_strategy == "PACK"
    assert PLACEMENT_STRATEGIES == ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def test_an_unknown_strategy_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"scaling.placement_strategy = 'spread' is not one of: PACK, SPREAD"):
        config_from_dict({"scaling": {"placement_strategy": "spread"}})


@pytest.mark.parametrize("rel", K8S_CONFIGS)
def test_k8s_configs_spread_workers_over_pods(rel):
    assert load_config(os.path.join(REPO, rel)).scaling.placement_strategy == "SPREAD"


@dataclasses.dataclass
class _WorkerPlan:
    run_name: str = "r"


class _Captured(Exception):
    """Raised by the fake trainer: carries the keyword arguments the driver passed."""

    def __init__(self, kwargs):
        super().__init__("captured")
        self.kwargs = kwargs


@pytest.mark.parametrize("strategy", PLACEMENT_STRATEGIES)
def test_strategy_reaches_ray_train_scaling_config(monkeypatch, strategy):
    from ray.train import ScalingConfig

    from job.cluster import driver

    def fake_trainer(**kwargs):
        raise _Captured(kwargs)

    # Everything before the trainer is built: no Ray, no storage, no data.
    monkeypatch.setattr(driver, "connect", lambda cfg: None)
    monkeypatch.setattr(driver, "quiet_ray_data", lambda: None)
    monkeypatch.setattr(driver, "ray_dataset", lambda uri, manifest, split: f"dataset:{split}")
    monkeypatch.setattr(driver.storage, "arrow_filesystem", lambda uri: (None, "bucket/runs"))
    monkeypatch.setattr(driver, "TensorflowTrainer", fake_trainer)

    cfg = config_from_dict(
        {"scaling": {"num_workers": 2, "cpus_per_worker": 2.0, "placement_strategy": strategy, "use_gpu": True}}
    )
    plan = type(
        "Plan",
        (),
        {
            "data_uri": "s3://bucket/datasets/demo",
            "manifest": types.SimpleNamespace(to_json=lambda: {}),
            "run_uri": "s3://bucket/runs/r",
            "run_name": "r",
            "global_batch_size": 64,
            "for_workers": lambda self: _WorkerPlan(),
        },
    )()
    with pytest.raises(_Captured) as caught:
        driver._fit(cfg, plan, telemetry=None)
    scaling = caught.value.kwargs["scaling_config"]
    assert isinstance(scaling, ScalingConfig)
    assert scaling.placement_strategy == strategy
    # The rest of the worker shape is passed along unchanged.
    assert scaling.num_workers == 2 and scaling.use_gpu is True
    assert scaling.resources_per_worker == {"CPU": 2.0, "GPU": 1.0}
