"""The ingress's Serve scaling options (pure: validated against Serve's own config model)."""

from __future__ import annotations

import pytest
from ray.serve.config import AutoscalingConfig

from actors.serving import ingress_scaling
from headstart.settings import Settings


def test_one_replica_by_default() -> None:
    assert ingress_scaling(Settings()) == {"num_replicas": 1}


def test_autoscaling_between_bounds_is_a_valid_serve_config() -> None:
    options = ingress_scaling(Settings(ingress_min_replicas=2, ingress_max_replicas=6))
    config = AutoscalingConfig(**options["autoscaling_config"])
    assert (config.min_replicas, config.max_replicas, config.target_ongoing_requests) == (2, 6, 64.0)


def test_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="ingress_min_replicas"):
        Settings(ingress_min_replicas=3, ingress_max_replicas=2)
