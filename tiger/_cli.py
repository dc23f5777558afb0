"""The ``tiger`` command: ``tiger serve``, ``tiger stats``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tiger._errors import TigerError, Unavailable
from tiger._server import check_url, ping
from tiger._writer import HEARTBEAT, PUB_HWM, serve_forever

DEFAULT_URL = "tcp://127.0.0.1:7710"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiger", description="A multiprocess store: one writer, a replica in every client.")
    commands = parser.add_subparsers(dest="command", required=True)
    env_url = os.environ.get("TIGER_URL") or None

    serve = commands.add_parser("serve", help="run a writer in the foreground (Ctrl-C or SIGTERM stops it)")
    serve.add_argument("--url", default=env_url or DEFAULT_URL, help=f"where to bind (default: $TIGER_URL or {DEFAULT_URL})")
    serve.add_argument("--heartbeat", type=float, default=HEARTBEAT, help="seconds between heartbeats (default %(default)s)")
    serve.add_argument("--owner-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--pub-hwm", type=int, default=PUB_HWM, help=argparse.SUPPRESS)  # tests force drops with it

    stats = commands.add_parser("stats", help="show a running writer's epoch, seq, clients and record counts")
    stats.add_argument("--url", default=env_url or DEFAULT_URL, help=f"the writer's URL (default: $TIGER_URL or {DEFAULT_URL})")
    stats.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            check_url(args.url)
            if not args.heartbeat > 0:
                raise ValueError("--heartbeat must be a positive number of seconds")
            return serve_forever(
                args.url, heartbeat=args.heartbeat, owner_pid=args.owner_pid, watch_stdin=args.watch_stdin, pub_hwm=args.pub_hwm
            )
        try:
            print(format_stats(ping(check_url(args.url), args.timeout)))
        except Unavailable as e:
            print(f"tiger stats: {e} (pass --url or set TIGER_URL to reach another writer)", file=sys.stderr)
            return 1
        return 0
    except (TigerError, ValueError, TypeError) as e:
        print(f"tiger {args.command}: {e}", file=sys.stderr)
        return 1


def format_stats(stats: dict) -> str:  # type: ignore[type-arg]
    lines = [
        f"url      {stats['url']}",
        f"pid      {stats['pid']}",
        f"epoch    {stats['epoch']}",
        f"seq      {stats['seq']}",
        f"uptime   {stats['uptime']:.1f} s",
        f"clients  {stats['clients']}",
        f"records  {stats['records']}",
    ]
    rows = [(t, ns, n) for t, namespaces in stats["tables"].items() for ns, n in namespaces.items()]
    if rows:
        wt = max(5, *(len(t) for t, _, _ in rows))
        wn = max(9, *(len(ns) for _, ns, _ in rows))
        lines += ["", f"{'table':<{wt}}  {'namespace':<{wn}}  records"]
        lines += [f"{t:<{wt}}  {ns:<{wn}}  {n:>7}" for t, ns, n in rows]
    else:
        lines += ["", "(no records)"]
    return "\n".join(lines)
