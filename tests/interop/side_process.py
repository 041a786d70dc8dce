"""A script run by the side environment's python, as an asyncio subprocess of the test.

Its stdout is read line by line into a queue and its stderr is kept, both by reader tasks
that run until EOF, so the pipes never fill. Waiting for a line is bounded; leaving the block
terminates the process, then kills it if it has not exited within a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIPECAT_CLIENT = HERE / "pipecat_client.py"
PIPECAT_SERVER = HERE / "pipecat_server.py"

# Variables of our environment that must not leak into the side environment.
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIPECAT_SETUP_FILES")


def side_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class SideProcess:
    def __init__(self, process: asyncio.subprocess.Process, argv: tuple[str, ...]) -> None:
        self.process = process
        self.argv = argv
        self.stdout_lines: list[str] = []
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._stderr: list[bytes] = []
        self._readers = [
            asyncio.ensure_future(self._read_stdout()),
            asyncio.ensure_future(self._read_stderr()),
        ]

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls, *argv: str, stop_timeout: float = 10.0, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[SideProcess]:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=side_env(env),
        )
        side = cls(process, argv)
        try:
            yield side
        finally:
            await side.stop(stop_timeout)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def report(self, tail: int = 6000) -> str:
        """What the process said, for an assertion message."""
        return (
            f"side process {' '.join(self.argv)} (exit code {self.process.returncode})\n"
            f"--- stdout ---\n{''.join(self.stdout_lines)}"
            f"--- stderr (tail) ---\n{self.stderr[-tail:]}"
        )

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            async for raw in self.process.stdout:
                line = raw.decode(errors="replace")
                self.stdout_lines.append(line)
                await self._lines.put(line)
        finally:
            await self._lines.put(None)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._stderr.append(chunk)

    async def next_line(self, timeout: float) -> str | None:
        """The next line of stdout, ``None`` at EOF. Raises ``AssertionError`` on timeout."""
        try:
            return await asyncio.wait_for(self._lines.get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no line on stdout within {timeout}s\n{self.report()}") from None

    async def line_starting_with(self, prefix: str, timeout: float) -> str:
        """The first line of stdout that starts with ``prefix``, within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            line = await self.next_line(max(0.0, deadline - loop.time()))
            if line is None:
                await self.wait(5)
                raise AssertionError(f"stdout ended before a {prefix!r} line\n{self.report()}")
            if line.startswith(prefix):
                return line.rstrip("\n")

    async def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited and its output has been read."""
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
            await asyncio.wait_for(asyncio.gather(*self._readers), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"did not exit within {timeout}s\n{self.report()}") from None
        return code

    async def stop(self, timeout: float = 10.0) -> int:
        """Terminate (SIGTERM), then kill after ``timeout`` seconds; return the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        # The pipes reach EOF once the process is gone; the readers end by themselves.
        _, pending = await asyncio.wait(self._readers, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        code = self.process.returncode
        assert code is not None
        return code
