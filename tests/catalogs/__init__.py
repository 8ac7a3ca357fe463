"""Catalogs the tests share."""

from pathlib import Path

#: The catalog of ARCHITECTURE.md's "Custom schema" contract (issue 19).
CUSTOM_SCHEMA = Path(__file__).resolve().parent / "custom_schema.yaml"
