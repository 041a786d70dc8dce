"""Every Python code block of README.md and docs/*.md runs, as a program, and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer(document.read_text()), start=1):
            found.append((f"{document.relative_to(ROOT)}#{number}", match.group(1)))
    return found


def test_the_docs_have_code_to_run() -> None:
    names = [name for name, _ in blocks()]
    assert "README.md#1" in names
    assert any(name.startswith("docs/quickstart.md") for name in names)


@pytest.mark.parametrize(("name", "code"), blocks(), ids=[name for name, _ in blocks()])
def test_code_block_runs(name: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"


def test_every_setting_is_documented() -> None:
    from fastapi_busproxy.settings import BusProxySettings

    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in BusProxySettings.model_fields:
        assert f"`BUSPROXY_{name.upper()}`" in text, f"{name} is not in docs/configuration.md"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^```bash\n(.*?)\n```", readme, re.S | re.M)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci.splitlines()
    assert any("example_app" in c for c in commands)
