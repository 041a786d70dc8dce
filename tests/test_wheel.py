"""The package as a user installs it: the wheel, built from this tree, runs the example app and
the quickstart's code with no checkout in sight."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_docs import BLOCK

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip (as `pip install .` would) and unpacked into a folder of its
    own; the dependencies are the test environment's."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=50,
    )
    [wheel] = out.glob("*.whl")
    target = out / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(target)
    assert not any(name.startswith("example_app/") for name in names)  # no generic top level
    assert any(name.endswith("licenses/LICENSE") for name in names)
    assert "fastapi_busproxy/py.typed" in names
    return target


def run_installed(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Outside the checkout, the unpacked wheel first on the path: the package and the example
    # come from the wheel, not from this tree.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=50
    )


def test_the_wheel_is_what_runs(installed: Path, tmp_path: Path) -> None:
    result = run_installed(
        installed, tmp_path, "-c", "import fastapi_busproxy; print(fastapi_busproxy.__file__)"
    )
    assert result.stdout.startswith(str(installed)), result.stdout + result.stderr


def test_the_example_app_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    result = run_installed(installed, tmp_path, "-m", "fastapi_busproxy.example_app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[demo] done: 2 answers received" in result.stdout


@pytest.mark.parametrize("document", ["README.md", "docs/quickstart.md"])
def test_the_quickstart_code_runs_from_the_wheel(
    installed: Path, tmp_path: Path, document: str
) -> None:
    blocks = BLOCK.findall((ROOT / document).read_text())
    assert blocks
    for number, code in enumerate(blocks, start=1):
        script = tmp_path / f"block{number}.py"
        script.write_text(code)
        result = run_installed(installed, tmp_path, str(script))
        assert result.returncode == 0, f"{document}#{number}:\n{result.stdout}\n{result.stderr}"
