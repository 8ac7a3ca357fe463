"""``headstart demo``: simulated users go through onboarding; their live state is shown.

Events go in through the same publishing helper a Python producer uses (pseudonymized at the
edge, deduplicated by event id); state is read back from the shard actors that own the users.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import nats
from rich.console import Console
from rich.table import Table

from engine.errors import HeadstartError
from engine.keys import Pseudonymizer
from headstart.config import Settings
from headstart.home import DataHome
from headstart.rpc import ShardClient
from headstart.runtime import instance_running
from headstart.streams import EventPublisher

#: A short onboarding path, one event per round; each user starts a round later than the last.
SCRIPT: list[dict[str, Any]] = [
    {"type": "session_started", "props": {}},
    {"type": "onboarding_started", "props": {}},
    {"type": "step_viewed", "props": {"step": "welcome"}},
    {"type": "step_completed", "props": {"step": "welcome"}},
    {"type": "profile_updated", "props": {"role": "engineer", "company_size": "11-50"}},
    {"type": "step_completed", "props": {"step": "profile"}},
    {"type": "tutorial_started", "props": {"tutorial": "first_project", "variant": "interactive"}},
    {"type": "feature_clicked", "props": {"feature": "create_project"}},
    {"type": "tutorial_completed", "props": {"tutorial": "first_project", "variant": "interactive"}},
    {"type": "feature_clicked", "props": {"feature": "invite"}},
]
DEVICES = ["mobile", "desktop", "tablet"]
LOCALES = ["en-US", "de-DE", "fr-FR", "pt-BR"]


def run_demo(settings: Settings, users: int, steps: int, console: Console) -> None:
    state = instance_running(DataHome(settings.home))
    if state is None or not state.get("ready"):
        raise HeadstartError("Headstart is not running for this home: start it with `headstart up --detach`")
    asyncio.run(_demo(state, settings, users, steps, console))


async def _demo(state: dict[str, Any], settings: Settings, users: int, steps: int, console: Console) -> None:
    nc = await nats.connect(state["nats_url"], connect_timeout=5)
    try:
        shards = ShardClient(nc, state["partitions"])
        publisher = EventPublisher(nc.jetstream(), pseudonymizer := _pseudonymizer(settings))
        names = [f"demo-user-{i + 1}@example.com" for i in range(users)]
        keys = [pseudonymizer.key(name) for name in names]
        for round_no in range(steps):
            events = []
            for i, name in enumerate(names):
                step = round_no - (i % 3)  # users progress at different paces
                if 0 <= step < len(SCRIPT):
                    events.append(
                        {
                            **SCRIPT[step],
                            "event_id": str(uuid.uuid4()),
                            "user_id": name,
                            "ts": time.time(),
                            "context": {"device_type": DEVICES[i % 3], "locale": LOCALES[i % 4]},
                        }
                    )
            await publisher.publish_many(events)
            # Shards apply events within milliseconds of JetStream storing them; the pause is
            # for the reader's eyes.
            await asyncio.sleep(0.3)
            table = Table(title=f"round {round_no + 1}: {len(events)} events published")
            for column in ("user", "key", "sessions", "steps done", "features", "tutorials", "engagement"):
                table.add_column(column)
            for name, key in zip(names, keys, strict=False):
                view = await shards.get_user(key)
                if view is None:
                    table.add_row(name, key[:10] + "…", "-", "-", "-", "-", "-")
                    continue
                table.add_row(
                    name,
                    key[:10] + "…",
                    str(view["sessions"]),
                    ", ".join(view["steps_completed"]) or "-",
                    ", ".join(f"{f}×{n}" for f, n in view["features"].items()) or "-",
                    ", ".join(
                        f"{t['tutorial']}/{t['variant']} {t['completed']}/{t['started']}"
                        for t in view["tutorials"]
                    )
                    or "-",
                    f"{view['engagement']:.2f}",
                )
            console.print(table)
        console.print("Raw ids (the e-mail addresses) never left this process: the engine only saw the keys.")
    finally:
        await nc.close()


def _pseudonymizer(settings: Settings) -> Pseudonymizer:
    configured = settings.secret.get_secret_value() if settings.secret else None
    return Pseudonymizer(DataHome(settings.home).secret(configured))
