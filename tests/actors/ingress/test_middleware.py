"""A configured Segment API prefix reaches the ``/segment`` routes (the ingress's ASGI front)."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.ingress import SEGMENT_PREFIX, HotPath


def test_a_configured_prefix_is_rewritten_to_the_segment_routes() -> None:
    seen: list[str] = []

    async def downstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["path"])

    front = HotPath(downstream)  # type: ignore[arg-type]
    HotPath.segment_prefix = "/collect/segment"
    try:
        for path in ("/collect/segment/v1/batch", "/segment/v1/track", "/v1/events", "/collect/other"):
            scope = {"type": "http", "method": "POST", "path": path, "headers": []}
            asyncio.run(front(scope, None, None))  # type: ignore[arg-type]
    finally:
        HotPath.segment_prefix = SEGMENT_PREFIX
    assert seen == ["/segment/v1/batch", "/segment/v1/track", "/v1/events", "/collect/other"]
