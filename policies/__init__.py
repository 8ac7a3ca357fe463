"""Bandit and rule policies, one module each behind :class:`policies.base.Policy`.

>>> sorted(available())
['epsilon_greedy', 'journey', 'linear_igw', 'linucb', 'thompson', 'ucb']
>>> create("linear_igw", ["video", "checklist"], dim=4).name
'linear_igw'
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from typing import Any

from policies.base import REGISTRY, Choice, Policy

__all__ = ["Choice", "Policy", "available", "create"]

#: The policy Headstart serves when the catalog names none: contextual, exact propensities.
DEFAULT_POLICY = "linear_igw"


def available() -> dict[str, type[Policy]]:
    """Every policy class of this package, by name (importing each module registers it)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(REGISTRY)


def create(name: str, arms: Sequence[str], dim: int = 0, **params: Any) -> Policy:
    policies = available()
    if name not in policies:
        raise KeyError(f"no policy named {name!r}; known: {', '.join(sorted(policies))}")
    return policies[name](arms, dim=dim, **params)
