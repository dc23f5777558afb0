"""The README's usage example runs as printed."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_readme_test_command_is_what_ci_runs():
    text = README.read_text()
    command = next(line for line in text.splitlines() if "pytest" in line and "pip install" in line)
    ci = (README.parent / ".ci" / "run").read_text()
    assert command.strip() in ci
