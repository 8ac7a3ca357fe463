"""The shard's plain parts: which partitions it consumes, and its background tasks."""

from __future__ import annotations

import asyncio

from actors.loops import Background
from actors.owned import OwnedPartitions
from engine.partition import PartitionState
from engine.shard import ShardState


def test_released_partitions_are_held_but_not_consumed() -> None:
    owned = OwnedPartitions(ShardState({p: PartitionState(p) for p in (0, 1, 2)}))
    owned.released.add(1)
    assert list(owned.consumed()) == [0, 2] and owned.numbers() == [0, 2]
    assert owned.holds(1) and not owned.consumes(1) and not owned.holds(7)


def test_stop_cancels_the_loops_and_lets_one_off_tasks_finish() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        background, done = Background(), []
        forever = asyncio.Event()

        async def loop() -> None:
            await forever.wait()

        async def once() -> None:
            await asyncio.sleep(0.01)
            done.append("once")

        background._loops = [asyncio.create_task(loop())]
        task = background._loops[0]
        background.spawn(once())
        background.stop()
        await asyncio.sleep(0.05)
        return task.cancelled(), done

    assert asyncio.run(scenario()) == (True, ["once"])
