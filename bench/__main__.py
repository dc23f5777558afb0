"""``python -m bench [--quick] [--only NAME] [--out DIR]``: run the scenarios, write results and plots, print the table."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

SCENARIOS = ["read", "write", "aio", "batch", "writers", "fanout", "feed", "join", "join-stall", "xdist", "plugin"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="tiger vs its floors and peers, with plots.")
    parser.add_argument("--quick", action="store_true", help="smaller runs: every scenario in under a minute")
    parser.add_argument("--only", choices=SCENARIOS, metavar="NAME", help=f"run one scenario: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", metavar="DIR", help="where results and plots go (default: bench/results/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    # imported here so `python -m bench --help` works anywhere
    from bench import _plot
    from bench._common import DEFAULT_OUT, compile_tiger, machine, machine_line, progress, write_json
    from bench._peers import Context, versions
    from bench._report import report

    out = Path(args.out).resolve() if args.out else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "bench", *argv])
    names = [args.only] if args.only else SCENARIOS
    box = machine()
    compile_tiger()
    libs = versions()
    progress("bench", f"{command}: {', '.join(names)} -> {out}")
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    started = time.monotonic()
    # /tmp, not a long $TMPDIR: ipc:// paths are limited to 107 characters
    with tempfile.TemporaryDirectory(prefix="tiger-bench-", dir="/tmp" if os.path.isdir("/tmp") else None) as tmp:
        for name in names:
            t0 = time.monotonic()
            progress(name, "start")
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                module = importlib.import_module(f"bench.{name.replace('-', '_')}")
                result = module.run(Context(quick=args.quick, tmp=workdir))
            except Exception:
                traceback.print_exc()
                progress(name, "FAILED (traceback above)")
                failed.append(name)
                continue
            data: dict[str, Any] = {
                "scenario": name,
                "command": command,
                "quick": args.quick,
                "machine": box,
                "versions": libs,
                "seconds": round(time.monotonic() - t0, 1),
                **dataclasses.asdict(result),
            }
            data["plot"] = _plot.plot(data, out)
            if "skipped" in data["plot"]:
                progress(name, f"no plot: {data['plot']['skipped']}")
            write_json(out / f"{name}.json", data)
            results.append(data)
            progress(name, f"done in {data['seconds']:.1f} s -> {out / (name + '.json')}")
    text = report(results, machine_line(box), command)
    print(text, flush=True)
    if not args.only and not failed:
        (out / "results.md").write_text(text)
    progress("bench", f"finished in {time.monotonic() - started:.1f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
