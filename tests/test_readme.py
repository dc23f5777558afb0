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


def test_readme_xdist_example_runs_as_is(pytester, monkeypatch):
    monkeypatch.delenv("TIGER_URL", raising=False)  # the inner runs start writers of their own
    files = dict(re.findall(r"`((?:conftest|test_\w+)\.py)`:\n\n```python\n(.*?)```", README.read_text(), re.S))
    assert set(files) == {"conftest.py", "test_billing.py"}
    for name, text in files.items():
        (pytester.path / name).write_text(text)
    for args in (["-n", "2"], ["-p", "no:xdist"]):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
        result.assert_outcomes(passed=24)
        assert _servers_started_in(pytester.path) == []  # the mock API's teardown ran: its server is gone


def _servers_started_in(cwd: pathlib.Path) -> list[int]:
    """Pids of running http.server processes whose working directory is ``cwd`` (zombies excluded)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if b"http.server" in (proc / "cmdline").read_bytes() and (proc / "cwd").resolve() == cwd.resolve():
                if (proc / "stat").read_text().split(") ", 1)[1][0] != "Z":
                    found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _table_after(text: str, heading: str) -> list[str]:
    """The rows of the first markdown table after ``heading``."""
    rest = text[text.index(heading) :]
    lines = rest.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_readme_performance_figures_are_the_committed_results():
    """The README's targets tables (issues 5, 12 and 13), its read table and its machine line are those of
    bench/results/results.md."""
    readme = README.read_text()
    results = (README.parent / "bench" / "results" / "results.md").read_text()
    for issue in (5, 12, 13):
        assert _table_after(readme, f"### Targets (issue {issue})") == _table_after(results, f"### targets (issue {issue})")
    assert _table_after(readme, "### read:") == _table_after(results, "### read:")
    machine = re.search(r"^Machine: (.*)$", results, re.M)
    assert machine is not None and machine.group(1) in readme


def _block_after(heading: str) -> str:
    """The first python block after ``heading``."""
    text = README.read_text()
    found = re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.S)
    assert found is not None, f"no python example after {heading!r}"
    return found.group(1)


def test_readme_asyncio_example_runs():
    exec(compile(_block_after("## asyncio"), "README.md", "exec"), {"__name__": "readme"})


def test_readme_feed_demo_runs_two_workers_one_awaiting_the_others_invoice(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("TIGER_URL", raising=False)
    script = tmp_path / "feed_demo.py"
    script.write_text(_block_after("`feed_demo.py`"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"invoice in_[0-9a-f]{16} for 500\n", done.stdout)
