"""The audit log: who did what, when, on ``hs.audit.<what>`` (the ``HS_AUDIT`` stream, a year).

Records carry the pseudonymized user key where a user is concerned, never the raw id.

Example::

    await audit(js, "erasure", who="admin", user_key=key)
"""

from __future__ import annotations

import json
import time
from typing import Any

from nats.js import JetStreamContext

from headstart.adapters.streams import publish_prepared
from headstart.adapters.topology import audit_subject


async def audit(js: JetStreamContext, what: str, who: str, msg_id: str | None = None, **fields: Any) -> None:
    """Store one audit record (``msg_id``: so that a repeated step is recorded once)."""
    record = json.dumps({"what": what, "who": who, "when": time.time(), **fields}).encode()
    headers = {"Nats-Msg-Id": msg_id} if msg_id else {}
    await publish_prepared(js, [(audit_subject(what), record, headers)], retry_for=5.0)
