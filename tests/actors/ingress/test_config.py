"""What an ingress replica is given never shows its secrets."""

from __future__ import annotations

from actors.ingress.config import IngressConfig
from engine.catalog import DEFAULT_CATALOG, load_catalog


def test_the_configs_repr_names_no_secret() -> None:
    config = IngressConfig(
        nats_url="nats://127.0.0.1:4222",
        partitions=8,
        secret=b"pseudonymization-secret-value",
        key_hashes={},
        catalog=load_catalog(DEFAULT_CATALOG),
        identity_verification="required",
        identity_secret=b"identity-secret-value",
    )
    shown = repr(config) + str(config)
    assert "pseudonymization-secret-value" not in shown and "identity-secret-value" not in shown
    assert "identity_verification='required'" in shown
