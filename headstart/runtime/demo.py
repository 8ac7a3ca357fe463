"""``headstart demo``: simulated users go through onboarding against the running engine.

Each round, every user does the next thing the engine suggested (or a step of a scripted path),
its events go in through ``POST /v1/events`` exactly as a frontend sends them, and the next
``POST /v1/decide`` shows what the engine now tells that user to do.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from engine.errors import HeadstartError
from headstart.runtime.home import DataHome, ensure_keys
from headstart.runtime.supervisor import instance_running
from headstart.settings import Settings

DEVICES = ["mobile", "desktop", "tablet"]
LOCALES = ["en-US", "de-DE", "fr-FR", "pt-BR"]
NAMES = ["Ada", "Grace", "Linus", "Margaret", "Alan", "Barbara", "Ken", "Frances"]


def events_for(
    step: dict[str, Any] | None, tutorial: dict[str, Any] | None, user: str, i: int
) -> list[dict[str, Any]]:
    """What a simulated user does when shown ``step``: view it, often complete it."""
    now = time.time()
    base = {"user_id": user, "ts": now, "context": {"device_type": DEVICES[i % 3], "locale": LOCALES[i % 4]}}
    if step is None:
        return [
            {
                **base,
                "event_id": str(uuid.uuid4()),
                "type": "feature_clicked",
                "props": {"feature": "dashboard"},
            }
        ]
    out = [{**base, "event_id": str(uuid.uuid4()), "type": "step_viewed", "props": {"step": step["id"]}}]
    if step["kind"] == "profile":
        out.append(
            {
                **base,
                "event_id": str(uuid.uuid4()),
                "type": "profile_updated",
                "props": {"name": NAMES[i % len(NAMES)], "role": "engineer", "company_size": "11-50"},
            }
        )
    if tutorial is not None:
        tut = {"tutorial": tutorial["id"], "variant": tutorial["variant"]}
        out.append({**base, "event_id": str(uuid.uuid4()), "type": "tutorial_started", "props": tut})
        out.append({**base, "event_id": str(uuid.uuid4()), "type": "tutorial_completed", "props": tut})
    if (i + int(now)) % 4 != 0:  # most users complete the step they were shown
        out.append(
            {**base, "event_id": str(uuid.uuid4()), "type": "step_completed", "props": {"step": step["id"]}}
        )
    return out


def run_demo(settings: Settings, users: int, steps: int, console: Console) -> None:
    home = DataHome(settings.home)
    state = instance_running(home)
    if state is None or not state.get("ready") or not state.get("http_url"):
        raise HeadstartError("Headstart is not running for this home: start it with `headstart up --detach`")
    keys = ensure_keys(home.keys_file)
    frontend = {"Authorization": f"Bearer {keys['frontend']}"}
    names = [f"demo-user-{i + 1}@example.com" for i in range(users)]
    stored = 0
    with httpx.Client(base_url=state["http_url"], headers=frontend, timeout=10) as http:
        decisions = [_decide(http, name, i) for i, name in enumerate(names)]
        for round_no in range(1, steps + 1):
            batch = [
                e
                for i, (name, d) in enumerate(zip(names, decisions, strict=True))
                for e in events_for(d["step"], d["tutorial"], name, i)
            ]
            accepted = http.post("/v1/events", json={"events": batch})
            if accepted.status_code != 200:
                raise HeadstartError(f"/v1/events answered {accepted.status_code}: {accepted.text}")
            stored += accepted.json()["accepted"]
            decisions = [_decide(http, name, i) for i, name in enumerate(names)]
            table = Table(
                title=f"round {round_no}: {accepted.json()['accepted']} events stored, then /v1/decide"
            )
            for column in ("user", "next step", "tutorial", "message", "flags on", "segments"):
                table.add_column(column, overflow="fold")
            for name, d in zip(names, decisions, strict=True):
                table.add_row(
                    name.split("@")[0],
                    d["step"]["id"] if d["step"] else "(journey complete)",
                    f"{d['tutorial']['id']}/{d['tutorial']['variant']}" if d["tutorial"] else "-",
                    d["message"],
                    ", ".join(f for f, on in d["flags"].items() if on) or "-",
                    ", ".join(d["segments"]),
                )
            console.print(table)
    at = Counter(d["step"]["id"] if d["step"] else "(complete)" for d in decisions)
    console.print(
        f"[bold]{steps} rounds, {stored} events stored, {users} users[/]; now at: "
        + ", ".join(f"{step} {n}" for step, n in at.most_common())
    )
    console.print(
        "Raw ids (the e-mail addresses) were pseudonymized at the edge: the engine only keeps keys."
    )
    console.print(f"Click through it yourself: {state['http_url']}/#key={keys['frontend']}")


def _decide(http: httpx.Client, user: str, i: int) -> dict[str, Any]:
    response = http.post(
        "/v1/decide",
        json={"user_id": user, "context": {"device_type": DEVICES[i % 3], "locale": LOCALES[i % 4]}},
    )
    if response.status_code != 200:
        raise HeadstartError(f"/v1/decide answered {response.status_code}: {response.text}")
    result: dict[str, Any] = response.json()
    return result
