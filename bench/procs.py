"""Server processes: started with ``python -m bench.server``, ready on ``READY <port>``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def pipecat_python() -> str | None:
    """The python of the pipecat-ai side venv, if there is one."""
    candidate = os.environ.get("BUSPROXY_PIPECAT_PYTHON") or str(
        REPO / ".pipecat-venv" / "bin" / "python"
    )
    return candidate if Path(candidate).exists() else None


class ServerError(RuntimeError):
    """A server process did not start, or died."""


@dataclass(frozen=True)
class ServerSpec:
    kind: str  # "echo", "bus", or "pipecat" (the reference's server, tests/interop)
    deflate: bool = False
    serializer: str = "json"

    @property
    def label(self) -> str:
        extra = f" {self.serializer}" if self.kind == "bus" else ""
        return f"{self.kind}{extra} deflate={'on' if self.deflate else 'off'}"


class ServerProcess:
    """One server process on 127.0.0.1; ``await start()``, then ``url()``, ``rss()``, ``stop()``."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError("not started")
        return self.process.pid

    async def start(self) -> ServerProcess:
        spec = self.spec
        env = dict(os.environ)
        if spec.kind == "pipecat":
            # The reference's server, in its own virtual environment (see tests/interop).
            python = pipecat_python()
            if python is None:
                raise ServerError("no pipecat-ai side venv: .pipecat-venv, BUSPROXY_PIPECAT_PYTHON")
            for name in ("PYTHONPATH", "VIRTUAL_ENV", "PIPECAT_SETUP_FILES"):
                env.pop(name, None)
            argv = [python, str(REPO / "tests" / "interop" / "pipecat_server.py")]
        else:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
            argv = [
                sys.executable,
                "-m",
                "bench.server",
                "--kind",
                spec.kind,
                "--port",
                "0",
                "--deflate",
                "on" if spec.deflate else "off",
                "--serializer",
                spec.serializer,
            ]
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(REPO),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
        )
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        raise ServerError(f"{spec.label} exited before READY: {self.errors()}")
                    if line.startswith(b"READY"):
                        self.port = int(line.split()[1])
                        return self
        except TimeoutError:
            await self.stop()
            raise ServerError(f"{spec.label}: no READY in {START_TIMEOUT}s") from None
        except BaseException:  # cancelled (a scenario's timeout): leave no process behind
            await asyncio.shield(self.stop())
            raise

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS of /proc/<pid>/status)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError(f"no VmRSS for pid {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def errors(self, limit: int = 2000) -> str:
        """The end of the server's stderr."""
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        return text[-limit:].strip()

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        finally:
            self._stderr.close()


class ServerPool:
    """Servers shared by the scenarios of one run, started once per spec."""

    def __init__(self) -> None:
        self._servers: dict[ServerSpec, ServerProcess] = {}
        self._starting: dict[ServerSpec, asyncio.Task[ServerProcess]] = {}

    async def get(self, spec: ServerSpec) -> ServerProcess:
        """The running server for ``spec``, started on first use.

        Raises:
            ServerError: it could not start, or it has died since (a crash is reported, not
                hidden by a restart).
        """
        server = self._servers.get(spec)
        if server is None:
            task = self._starting.get(spec)
            if task is None:
                task = asyncio.ensure_future(ServerProcess(spec).start())
                self._starting[spec] = task
            server = await task
            self._servers[spec] = server
        if not server.alive():
            raise ServerError(f"{spec.label} has died: {server.errors()}")
        return server

    async def prestart(self, specs: list[ServerSpec]) -> None:
        """Start these servers at once (in parallel), ignoring failures until used."""
        await asyncio.gather(*(self.get(spec) for spec in specs), return_exceptions=True)

    def running(self) -> list[ServerProcess]:
        return [s for s in self._servers.values() if s.alive()]

    async def close(self) -> None:
        for task in self._starting.values():
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        started = [
            t.result()
            for t in self._starting.values()
            if not t.cancelled() and t.exception() is None
        ]
        await asyncio.gather(*(s.stop() for s in {*self._servers.values(), *started}))
        self._servers.clear()
        self._starting.clear()
