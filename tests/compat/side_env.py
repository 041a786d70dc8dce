"""Where the side virtual environment with pipecat-ai lives, for the suites that compare with it.

pipecat-ai is never a dependency of ours: it is installed in a separate venv (by default
``<repo>/.pipecat-venv``), and tests run programs there in a subprocess. Point
``BUSPROXY_PIPECAT_PYTHON`` at that venv's python to use another one.

Without it the reference tests are skipped, except on CI (``CI=true``), where they fail: CI must
build the side venv. Use it from a fixture::

    @pytest.fixture(scope="session")
    def pipecat_python() -> str:
        return require_pipecat_python()
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "BUSPROXY_PIPECAT_PYTHON"
DEFAULT_VENV = REPO / ".pipecat-venv"
#: The pipecat-ai release whose worker API ours follows (and whose behaviour the suites record).
PIPECAT_VERSION = "1.14"


def _default_python() -> Path:
    if sys.platform == "win32":
        return DEFAULT_VENV / "Scripts" / "python.exe"
    return DEFAULT_VENV / "bin" / "python"


def _candidate() -> Path:
    configured = os.environ.get(ENV_VAR)
    # Not resolved: a venv's python finds its pyvenv.cfg from the path it was started by.
    return Path(configured) if configured else _default_python()


def pipecat_python() -> str | None:
    """The side venv's python, or None when there is none (an executable file is all it checks)."""
    candidate = _candidate()
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


@functools.cache
def pipecat_version(python: str) -> str | None:
    """The pipecat-ai version installed for ``python``, or None if it has none."""
    try:
        result = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('pipecat-ai'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _unavailable(reason: str) -> None:
    how = (
        f"build it with: python3.11 -m venv {DEFAULT_VENV} && "
        f"{_default_python()} -m pip install 'pipecat-ai=={PIPECAT_VERSION}.*' "
        f"(or set {ENV_VAR} to a python that has pipecat-ai {PIPECAT_VERSION})"
    )
    message = f"no pipecat-ai side venv: {reason}; {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} [CI=true: the side venv is required]", pytrace=False)
    pytest.skip(message)


def require_pipecat_python(*, version: str | None = PIPECAT_VERSION) -> str:
    """The side venv's python; skips the test when there is none, or fails it when ``CI=true``.

    Args:
        version: The pipecat-ai release the caller needs (``"1.14"`` accepts any 1.14.x), or
            None for any.
    """
    python = pipecat_python()
    if python is None:
        where = os.environ.get(ENV_VAR) and f"{ENV_VAR}={os.environ[ENV_VAR]}"
        _unavailable(f"{where or _default_python()} is not an executable file")
        raise AssertionError("unreachable")  # skip() and fail() raise
    installed = pipecat_version(python)
    if installed is None:
        _unavailable(f"{python} has no pipecat-ai installed")
    elif version is not None and installed != version and not installed.startswith(version + "."):
        _unavailable(f"{python} has pipecat-ai {installed}, not {version}")
    return python
