"""A check shared by the tests of loops that must end when cancelled."""

from __future__ import annotations

import asyncio


async def ends_on_cancel(task: asyncio.Task, within_s: float = 1.0) -> bool:
    """Cancel `task`; whether it ended as cancelled within `within_s`. A task that lost the cancel
    and goes on is cancelled again until it ends, so a failing test leaves nothing running."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=within_s)
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    return bool(done) and task.cancelled()
