"""Flag: what asyncio.Event does, without allocating before anyone waits."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from fastapi_busproxy._flag import Flag

pytestmark = pytest.mark.anyio


async def test_set_wakes_every_waiter_and_wait_returns_at_once_after() -> None:
    flag = Flag()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await flag.wait()
        woken.append(n)

    async with anyio.create_task_group() as group:
        for n in range(3):
            group.start_soon(waiter, n)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        flag.set()
    assert sorted(woken) == [0, 1, 2]
    with anyio.fail_after(1):
        await flag.wait()  # set: no wait
    assert flag.is_set()


async def test_clear_makes_later_waits_wait_again() -> None:
    flag = Flag()
    flag.set()
    flag.clear()
    assert not flag.is_set()
    task = asyncio.create_task(flag.wait())
    await anyio.wait_all_tasks_blocked()
    assert not task.done()
    flag.set()
    with anyio.fail_after(1):
        await task


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    flag = Flag()
    task = asyncio.create_task(flag.wait())
    await anyio.wait_all_tasks_blocked()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flag._waiters == []
    flag.set()  # no waiter left to wake, no error
