"""A link cut under load: what is lost or delivered twice, per direction, with and without
resume; and what resume costs when nothing is cut.

The client sends numbered messages through a TCP relay (:mod:`bench.relay`) to the bus
server's ``echo`` worker, which sends each one back; the relay cuts the connection every
``every`` messages, by RST and by FIN in turn, on both sides. At the end the server says how
many it received and how many were new (its ``tally`` job), so each direction is counted:

- client→server: lost = sent - new at the server; duplicated = received - new;
- server→client: lost = new at the server - new at the client; duplicated = what the client
  got twice beyond the server's own duplicates.

Three clients: ours with resume (``busproxy.v2``), ours without (``resume=False``: framed
``busproxy.v1``) and the plain format (``batching=False``, what a reference peer speaks).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi_busproxy import ReconnectPolicy

from ..clients import BusLink, Countdown, close_all, text_payload, wait_replies
from ..procs import ServerSpec
from ..relay import Break, running_relay
from ..stats import OrderCheck
from . import Context, Row, Scenario
from .common import pipeline
from .latency import PAYLOAD

MODES = {"resume": {}, "v1": {"resume": False}, "plain": {"batching": False}}
CUTS: tuple[tuple[Break, Break], ...] = (("rst", "rst"), ("fin", "fin"))
RETRY = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)
PACE = 0.005  # seconds between bursts of 10: about 2,000 messages/s, so cuts land mid-flight
IDLE = 3.0  # no reply for this long after the last send: the rest is lost


async def cut_run(
    ctx: Context, port: int, options: dict[str, bool], n: int, every: int
) -> dict[str, float]:
    # Every cut is logged as a warning by the client proxy: expected here, not news.
    proxy_logger = logging.getLogger("fastapi_busproxy.proxy")
    level = proxy_logger.level
    proxy_logger.setLevel(logging.ERROR)
    try:
        return await _cut_run(ctx, port, options, n, every)
    finally:
        proxy_logger.setLevel(level)


async def _cut_run(
    ctx: Context, port: int, options: dict[str, bool], n: int, every: int
) -> dict[str, float]:
    data = text_payload(PAYLOAD)
    async with running_relay(port) as relay:
        link = BusLink(relay.url(""), ctx.name("cut"), deflate=False, reconnect=RETRY, **options)
        check = OrderCheck(n)
        countdown = Countdown(n)
        got = 0

        def on_reply(seq: int) -> None:
            nonlocal got
            got += 1
            if check.see(seq):
                countdown.tick()

        link.on_reply = on_reply
        cuts = 0
        try:
            await link.open()
            for seq in range(n):
                await link.send_text(seq, data)
                if seq % 10 == 9:
                    await asyncio.sleep(PACE)  # the sender's pace, not a wait for something
                if seq % every == every - 1 and seq < n - 1:
                    relay.cut(*CUTS[cuts % len(CUTS)])
                    cuts += 1
            await wait_replies([check], countdown.event, IDLE)
            await link.voice.registry.wait_ready("echo", 20)
            async with link.voice.job(
                "echo", name="tally", payload={"source": link.name}, timeout=20
            ) as job:
                pass
        finally:
            await close_all([link])
    received, unique = job.response["received"], job.response["unique"]
    server_duplicates = received - unique
    return {
        "c2s_lost": n - unique,
        "c2s_duplicated": server_duplicates,
        "s2c_lost": unique - check.received,
        "s2c_duplicated": check.duplicated - server_duplicates,
        "reordered": check.reordered,
        "cuts": cuts,
        "reconnects": link.proxy.stats.reconnects,
        "resumes": link.proxy.stats.resumes,
    }


def scenario(n: int, every: int, pipelined: int) -> Scenario:
    async def run_round(ctx: Context) -> dict[str, float]:
        bus = await ctx.pool.get(ServerSpec("bus", False))
        figures: dict[str, float] = {}
        for mode, options in MODES.items():
            result = await cut_run(ctx, bus.port, options, n, every)
            figures.update({f"{mode}.{key}": value for key, value in result.items()})
        # What resume costs when nothing is cut: pipelined round trips, v2 against v1.
        for mode in ("resume", "v1"):
            link = BusLink(bus.url(""), ctx.name(), deflate=False, **MODES[mode])
            text = text_payload(PAYLOAD)

            async def send(link: BusLink, seq: int) -> None:
                await link.send_text(seq, text)  # noqa: B023 (the same payload for both)

            try:
                await link.open()
                result = await pipeline([link], pipelined, send, bus)
            finally:
                await close_all([link])
            figures[f"{mode}.msgs_per_s"] = result["msgs_per_s"]
        return figures

    def rows_for(mode: str, name: str) -> tuple[Row, ...]:
        return tuple(
            Row(
                f"{what}, {name}",
                "msgs",
                f"plain.{key}",
                f"{mode}.{key}",
                "lower",
                ref_name="plain",
                value_name=mode,
                digits=0,
                show_ratio=False,
            )
            for what, key in (
                ("lost client→server", "c2s_lost"),
                ("lost server→client", "s2c_lost"),
                ("duplicated client→server", "c2s_duplicated"),
                ("duplicated server→client", "s2c_duplicated"),
            )
        )

    return Scenario(
        name="cut",
        variant=f"every={every}",
        run_round=run_round,
        rows=(
            *rows_for("resume", "resume"),
            *rows_for("v1", "no resume"),
            Row(
                "pipelined round trips, resume vs none",
                "msg/s",
                "v1.msgs_per_s",
                "resume.msgs_per_s",
                "higher",
                ref_name="v1",
                value_name="resume",
                digits=0,
            ),
        ),
        checks=(
            "resume.c2s_lost",
            "resume.s2c_lost",
            "resume.c2s_duplicated",
            "resume.s2c_duplicated",
            "resume.reordered",
        ),
        expected=("resume.cuts", "resume.msgs_per_s", "v1.msgs_per_s"),
    )
