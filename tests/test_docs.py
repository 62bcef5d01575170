"""Every page of ``docs/`` that teaches a task runs: its example is executed as written.

A page marks its example in the fence's info string, which Markdown renderers ignore after the
language: ```` ```yaml file=PATH ```` writes the block to ``PATH``, ```` ```bash run ```` and
```` ```python run ```` run the block (in page order, in one scratch folder, with the project's
``mergesearch`` and ``python`` first on ``PATH``). The pages' models are ``models/base``,
``models/math`` and ``models/code``: the test builds tiny ones there (seconds, offline).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.tiny_models import make_named_family

REPO = Path(__file__).resolve().parents[1]
PAGES = ("CUSTOM_TASKS.md", "EVALUATORS.md", "PYTHON_API.md", "DISTRIBUTED.md")
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    language: str
    action: str  # "file" or "run"
    target: str | None  # the file to write
    text: str


def blocks(page: Path) -> list[Block]:
    """The page's example blocks, in order; plain blocks (no ``file=`` or ``run``) are prose."""
    found = []
    for match in FENCE.finditer(page.read_text()):
        language, *words = match["info"].split()
        for word in words:
            if word.startswith("file="):
                found.append(Block(language, "file", word.removeprefix("file="), match["body"]))
            elif word == "run":
                found.append(Block(language, "run", None, match["body"]))
    return found


def test_the_parser_reads_files_and_runs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```yaml file=a/b.yaml\nx: 1\n```\n\n```bash\nnot run\n```\n```bash run\necho hi\n```\n"
    )
    assert blocks(page) == [
        Block("yaml", "file", "a/b.yaml", "x: 1\n"),
        Block("bash", "run", None, "echo hi\n"),
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERGESEARCH_", "PYTHONPATH"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1"
    )
    return env


@pytest.mark.parametrize("name", PAGES)
def test_the_pages_example_runs(name, tmp_path):
    page = REPO / "docs" / name
    found = blocks(page)
    assert any(b.action == "run" for b in found), f"{name} has no runnable example"
    make_named_family(tmp_path / "models", names=("math", "code"))
    for index, block in enumerate(found):
        if block.action == "file":
            path = tmp_path / block.target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
            continue
        if block.language == "python":
            script = tmp_path / f"example_{index}.py"
            script.write_text(block.text)
            argv = [sys.executable, str(script)]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", block.text]
        proc = subprocess.run(
            argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (
            f"{name}, block {index}:\n{block.text}\nexit {proc.returncode}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
