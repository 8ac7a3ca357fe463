"""The data home: every file Headstart writes at run time lives under one folder.

>>> import tempfile
>>> home = DataHome(Path(tempfile.mkdtemp()))
>>> secret = home.secret()
>>> secret == home.secret(), len(secret) >= 32, oct(home.secret_file.stat().st_mode & 0o777)
(True, True, '0o600')
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from engine.api_keys import ROLES, new_key

__all__ = ["DataHome", "ensure_keys", "new_key", "replace_private"]


class DataHome:
    """Paths under the data home, and the files that are generated once and then kept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats_dir = root / "nats"
        self.run_dir = root / "run"
        self.log_dir = root / "logs"
        self.secret_file = root / "secret"
        self.keys_file = root / "keys.json"
        self.identity_secret_file = root / "identity_secret"
        self.state_file = self.run_dir / "state.json"

    def ensure(self) -> DataHome:
        for path in (self.root, self.nats_dir, self.run_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def secret(self, configured: str | None = None) -> bytes:
        """The pseudonymization secret: configured, or generated once into ``secret`` (0600)."""
        if configured:
            return configured.encode()
        if not self.secret_file.exists():
            self.ensure()
            _write_private(self.secret_file, secrets.token_hex(32))
        return self.secret_file.read_text().strip().encode()

    def identity_secret(self, configured: str | None = None) -> bytes:
        """The identity verification secret (user hashes are HMACs under it): configured, or
        generated once into ``identity_secret`` (0600). Apart from the pseudonymization secret:
        the product's backends hold this one, and must not be able to pseudonymize."""
        if configured:
            return configured.encode()
        if not self.identity_secret_file.exists():
            self.ensure()
            _write_private(self.identity_secret_file, secrets.token_hex(32))
        return self.identity_secret_file.read_text().strip().encode()

    def read_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data

    def write_state(self, state: dict[str, Any]) -> None:
        self.ensure()
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def clear_state(self) -> None:
        self.state_file.unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    # Create with 0600 from the start: a chmod after writing leaves a window where others can read.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def ensure_keys(path: Path) -> dict[str, str]:
    """The keys in ``path``, generated on first use (0600). Never regenerated; a role added
    since (``server``) gets its key beside the existing ones, which stay as they are.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "keys.json"
    >>> _write_private(path, '{"frontend": "f", "admin": "a"}')
    >>> keys = ensure_keys(path)
    >>> keys["frontend"], keys["admin"], keys["server"].startswith("hs_se_")
    ('f', 'a', True)
    """
    if not path.exists():
        _write_private(path, json.dumps({role: new_key(role) for role in ROLES}, indent=2) + "\n")
    keys = json.loads(path.read_text())
    missing = [role for role in ROLES if role not in keys]
    if missing:
        keys.update({role: new_key(role) for role in missing})
        replace_private(path, json.dumps(keys, indent=2) + "\n")
    return {role: str(keys[role]) for role in ROLES}


def replace_private(path: Path, text: str) -> None:
    """Replace ``path`` whole with ``text`` (0600), through a new file renamed over it."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    _write_private(tmp, text)
    tmp.replace(path)
