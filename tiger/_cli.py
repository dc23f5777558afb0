"""The ``tiger`` command: ``tiger serve``, ``tiger stats``, ``load``, ``dump``, ``drop``, ``compact``, ``keygen``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from tiger._calls import check_seconds
from tiger._client import Client, _connect_arguments
from tiger._core import LEASE_GRACE
from tiger._errors import HandshakeFailed, TigerError, Unavailable
from tiger._log import COMPACT_BYTES
from tiger._lookup import LOOKUP_WAIT
from tiger._paths import in_the_way, room_for, write_whole
from tiger._protocol import ClearTable, Compact, Drop, Stats, say
from tiger._seed import SEED_RATE
from tiger._server import (
    NOT_STARTED,
    check_bind_url,
    check_connect_url,
    check_data_dir,
    check_reachable,
    check_secret_path,
    check_server_key,
    env_server_key,
    looks_like_key,
    ping,
    request_once,
    silence_hint,
    slow_lookup,
    why_unreachable,
)
from tiger._table import GLOBAL, ONCE_TABLE, RESERVED_PREFIX, check_name, well_formed_once
from tiger._writer import HEARTBEAT, PUB_HWM, serve_forever

DEFAULT_URL = "tcp://127.0.0.1:7710"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors do not repeat what looks like a key (``looks_like_key``) or what
    follows a ``secret:`` word: ``tiger serve --curve-secret $(cat keys/tiger.key)``, unquoted, printed the
    secret key in "unrecognized arguments: public: ... secret: ..." (a review)."""

    def error(self, message: str) -> NoReturn:
        hidden = _hidden_keys(message)
        if hidden != message:  # (a user trial: what to do was not said)
            hidden += (
                " (a key file's content split into words by an unquoted $(cat ...)? give --curve-secret the key "
                "file's path, DIR/tiger.key, and quote what holds spaces)"
            )
        super().error(hidden)


def _hidden_keys(message: str) -> str:
    """``message`` with every word that is a key, or follows a ``secret:`` or ``secret-key`` word, replaced.
    A word is taken whole and without its quotes or trailing comma, and also without ``=`` at its ends and as
    the value of ``--option=``: ``=`` is one of z85's characters (a key ending in it was shown: 1 run in 20)."""
    words = message.split(" ")
    after_secret = False
    for i, word in enumerate(words):
        bare = word.strip("'\",")
        candidates = [bare, bare.strip("="), bare.partition("=")[2]]
        candidates += [candidate.rstrip(":") for candidate in candidates]  # (":" is z85's too: "--opt=KEY:")
        if after_secret or any(looks_like_key(candidate) for candidate in candidates):
            words[i] = "<not shown: a key?>"
        after_secret = word.lower().lstrip("'\"-").startswith("secret")
    return " ".join(words)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tiger", description="A multiprocess store: one writer, a replica in every client.")
    commands = parser.add_subparsers(dest="command", required=True)
    env_url = os.environ.get("TIGER_URL") or None

    serve = commands.add_parser("serve", help="run a writer in the foreground (Ctrl-C or SIGTERM stops it)")
    serve.add_argument("--url", default=env_url or DEFAULT_URL, help=f"where to bind (default: $TIGER_URL or {DEFAULT_URL})")
    serve.add_argument("--heartbeat", type=float, default=HEARTBEAT, help="seconds between heartbeats (default %(default)s)")
    serve.add_argument("--data", default=None, help="keep the store in this directory (created if missing); default: memory only")
    serve.add_argument("--fsync", choices=["always", "everysec", "never"], help="with --data (default everysec)")
    serve.add_argument("--compact-bytes", type=int, default=COMPACT_BYTES, help="with --data: compact past this log size")
    serve.add_argument(
        "--curve-secret", default=None, metavar="FILE", help="serve with CurveZMQ using this key file (tiger keygen)"
    )
    serve.add_argument(
        "--lease-grace",
        type=float,
        default=LEASE_GRACE,
        metavar="SECONDS",
        help="seconds a client taken for gone (its connection closed: silent 3 s, stopped) keeps the namespaces it leases "
        "and the once values it is to tear down, so a process stopped for a while (Ctrl-Z) finds them when it resumes; "
        "a goodbye ends its leases at once (default %(default)g)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default %(default)s")
    serve.add_argument("--owner-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--made-dir", default=None, help=argparse.SUPPRESS)  # tiger.serve()'s ipc directory
    serve.add_argument("--failure-on-stdout", action="store_true", help=argparse.SUPPRESS)  # tiger.serve() reads it
    serve.add_argument("--pub-hwm", type=int, default=PUB_HWM, help=argparse.SUPPRESS)  # tests force drops with it

    stats = commands.add_parser("stats", help="show a running writer's epoch, seq, clients and record counts")
    stats.add_argument("--url", default=env_url or DEFAULT_URL, help=f"the writer's URL (default: $TIGER_URL or {DEFAULT_URL})")
    stats.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default %(default)s)")

    load = commands.add_parser("load", help="insert the records of a JSON or JSON-lines seed file")
    load.add_argument(
        "file",
        help='JSON lines of {"table": ..., "record": {...}} (optional "namespace"), or one {table: [records]}; '
        "- reads standard input (tiger dump | tiger load -)",
    )
    load.add_argument("--url", default=env_url or DEFAULT_URL, help=f"the writer's URL (default: $TIGER_URL or {DEFAULT_URL})")
    load.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the writer and each answer; a seed loaded in one write is given a second more "
        f"per {SEED_RATE:,} records (default %(default)s)",
    )

    compact = commands.add_parser("compact", help="make a writer started with --data write a snapshot and start a fresh log")
    compact.add_argument("--url", default=env_url or DEFAULT_URL, help=f"the writer's URL (default: $TIGER_URL or {DEFAULT_URL})")
    compact.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the snapshot to be in place (about 2 s per million records; default %(default)s)",
    )

    drop = commands.add_parser(
        "drop", help="drop namespaces from every table (a kept run's, what a killed run left at a writer of your own)"
    )
    drop.add_argument(
        "namespace", nargs="+", help="a namespace to drop (with --prefix: every namespace starting so; with --run: a run id)"
    )
    how = drop.add_mutually_exclusive_group()
    how.add_argument("--prefix", action="store_true", help="drop every namespace whose name starts with one given")
    how.add_argument(
        "--run",
        action="store_true",
        help="drop every namespace of the pytest runs given by id (RUN:... of their tests, tiger-run:RUN of their "
        "tiger_once factories): what a run kept (--tiger-keep) or a killed run left",
    )
    drop.add_argument("--url", default=env_url or DEFAULT_URL, help=f"the writer's URL (default: $TIGER_URL or {DEFAULT_URL})")
    drop.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer (default %(default)s)")

    keygen = commands.add_parser("keygen", help="write a CurveZMQ key pair: DIR/tiger.key (secret, 0600) and DIR/tiger.pub")
    keygen.add_argument("dir", nargs="?", default=".", help="where to write them (default: here)")

    dump = commands.add_parser("dump", help="print every record as JSON lines (tables, namespaces sorted; insertion order)")
    dump.add_argument("--url", default=env_url or DEFAULT_URL, help=f"the writer's URL (default: $TIGER_URL or {DEFAULT_URL})")
    dump.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the writer, and for each part of its records while they keep coming (default %(default)s)",
    )
    return parser


def _connected(url: str, timeout: float) -> Client:
    """``connect(url, timeout)`` (``--timeout``: seconds), at once ``Unavailable`` when nothing listens there
    (as ``tiger stats`` says it): connect would wait out its timeout (ZeroMQ retries a refused connection
    silently), or when its host name does not resolve (``why_unreachable``, within the same timeout)."""
    seconds = check_seconds(timeout, "--timeout", positive=True)  # (named as the option)
    assert seconds is not None  # (None only where no_limit)
    deadline, watch = check_reachable(url, seconds)  # (a pause from its probes on does not count: the watch's)
    try:
        url, server_key = _connect_arguments(url, env_server_key())  # (TIGER_SERVER_KEY only: errors name it)
        return Client(url, seconds, server_key=server_key, deadline=deadline, pause_watch=watch)
    finally:
        watch.stop()  # (idempotent: the client stopped it once connected)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _command(args)
        if sys.stdout is not None:  # (None: started with it closed, ``>&-``; print() then prints nothing)
            sys.stdout.flush()  # (here: a reader gone is found now, not by the flush at exit: a traceback)
        return code
    except BrokenPipeError:  # what read the output went away (``tiger dump | head``): nothing to say, as other
        # commands of a pipeline; "tiger dump: [Errno 32] Broken pipe" was printed, and a traceback at exit
        _stdout_to_devnull()
        return 1


def _stdout_to_devnull() -> None:
    """Point standard output's descriptor at /dev/null, so the flush at exit writes nowhere rather than raise
    again (Python's documented way: its "Note on SIGPIPE"); nothing if it has none (a StringIO)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _command(args: argparse.Namespace) -> int:
    """Run the command ``args`` name; its exit status. Its errors are said on stderr (status 1)."""
    try:
        if args.command in ("stats", "load", "dump", "compact", "drop"):
            check_server_key(env_server_key())  # (before any probe of the url: a bad key is said whatever is there)
        if args.command == "serve":
            args.url = check_bind_url(args.url)
            check_seconds(args.heartbeat, "--heartbeat", positive=True)
            check_seconds(args.lease_grace, "--lease-grace")
            if args.compact_bytes <= 0:
                raise ValueError(f"--compact-bytes must be a number of bytes above 0, got {args.compact_bytes}")
            if args.data is not None and not args.data.strip():
                raise ValueError("--data must name a directory (without --data the store is kept in memory only)")
            if args.data is not None:  # (a name that is not UTF-8 is served: stats shows it escaped)
                check_data_dir(args.data, "--data")
            elif args.fsync is not None:  # (accepted, and meant nothing: a user trial)
                raise ValueError("--fsync applies to a data directory: give --data DIR too (without it: in memory only)")
            if args.curve_secret is not None:  # (a key given in its place, or a directory: refused; a key not shown)
                check_secret_path(args.curve_secret, "--curve-secret")
            return serve_forever(
                args.url,
                log_level=args.log_level.upper(),
                heartbeat=args.heartbeat,
                owner_pid=args.owner_pid,
                watch_stdin=args.watch_stdin,
                pub_hwm=args.pub_hwm,
                data=args.data,
                fsync=args.fsync or "everysec",
                curve_secret=args.curve_secret,
                compact_bytes=args.compact_bytes,
                made_dir=args.made_dir,
                failure_on_stdout=args.failure_on_stdout,
                lease_grace=args.lease_grace,
            )
        if args.command == "load":
            from tiger._seed import load_files

            with _connected(args.url, args.timeout) as client:
                count = load_files(client, [args.file])
            say(f"loaded {count} records from {args.file}")
            return 0
        if args.command == "compact":
            # one request on a socket of its own, as tiger stats asks: no replica (joining a store of 2M records
            # to send one command took 900 MB and, under load, longer than the join's own timeout)
            seconds = check_seconds(args.timeout, "--timeout", positive=True)
            assert seconds is not None  # (None only where no_limit)
            result = request_once(check_connect_url(args.url), Compact(1), seconds, env_server_key()).result
            say(f"compacted: snapshot of {result['records']} records, {result['bytes']} bytes")
            return 0
        if args.command == "drop":
            how = "run" if args.run else "prefix" if args.prefix else "namespace"
            for line in drop_namespaces(args.url, args.namespace, how, args.timeout):
                say(line)
            return 0
        if args.command == "keygen":
            public = keygen(args.dir)
            say(f"wrote {args.dir}/tiger.key (secret) and {args.dir}/tiger.pub")
            say(f"server key for clients (tiger.connect(url, server_key=...) or TIGER_SERVER_KEY): {public}")
            return 0
        if args.command == "dump":
            from tiger._seed import dump_lines

            if sys.stdout is None:  # (started with it closed: the records would go nowhere, said nowhere)
                raise ValueError("standard output is closed: nothing to dump the records to (redirect it to a file)")
            with _connected(args.url, args.timeout) as client:
                lines = dump_lines(client)
            # UTF-8, what tiger load reads, whatever the locale: in the locale's encoding (ASCII, Latin-1) a
            # character it lacks stopped the dump half way, and one it has made a file tiger load refuses
            sys.stdout.flush()
            sys.stdout.buffer.writelines(line.encode("utf-8") + b"\n" for line in lines)
            sys.stdout.buffer.flush()
            return 0
        check_seconds(args.timeout, "--timeout", positive=True)  # (named as the option, as the other commands do)
        say(format_stats(ping(check_connect_url(args.url), args.timeout, env_server_key())))  # (no checksum shown)
        return 0
    except HandshakeFailed as e:  # (it says what to do; waiting longer cannot help)
        say(f"tiger {args.command}: {e}", sys.stderr)
        return 1
    except Unavailable as e:
        say(f"tiger {args.command}: {e} ({_advice(args.url, getattr(args, 'timeout', 5.0))})", sys.stderr)
        return 1
    except (TigerError, ValueError, TypeError, OSError) as e:
        if isinstance(e, BrokenPipeError) and args.command != "serve":  # (its output's reader gone: ``main``)
            raise
        say(f"tiger {args.command}: {e}", sys.stderr)  # (a writer that could not print its url says why it ends)
        if args.command == "serve" and args.failure_on_stdout:  # (where tiger.serve() reads why, as serve_forever's)
            say(f"{NOT_STARTED}tiger {args.command}: {e}", flush=True)
        return 1


def _advice(url: str, timeout: float) -> str:
    """What a command adds to an ``Unavailable`` from the writer at ``url`` (``--timeout``: ``timeout``): another
    url only when nothing is there (a writer that is busy, a compaction of millions of records, or paused still
    accepts connections, and a longer --timeout is the advice), or to see to the name server. Every command
    says it, as tiger stats did alone (tiger dump said only "did not answer")."""
    if slow_lookup(url, min(LOOKUP_WAIT, timeout)) is not None:  # (said in the error)
        return "see to the name server (/etc/resolv.conf), or pass --url with the writer's address"
    if why_unreachable(url, 0.1) is None:  # (a host name that does not resolve: said at once, in the error)
        return f"{silence_hint(url)}; a longer --timeout waits for a busy or paused one"
    return "pass --url or set TIGER_URL to reach another writer"


def drop_namespaces(url: str, names: Sequence[str], how: str = "namespace", timeout: float = 5.0) -> list[str]:
    """``tiger drop``: drop from every table, tiger's own too (its leases, and its once keys: the plugin's
    cleanup of a run does the same), on a socket of its own (no replica): each namespace in ``names``
    (``how="namespace"``), every namespace whose name starts with one of them (``"prefix"``), or every
    namespace of the pytest runs whose ids they are (``"run"``: ``RUN:...``, its tests', and ``tiger-run:RUN``,
    what its ``tiger_once`` factories wrote). Returns the lines to print: each namespace with the records it
    held. ``ValueError`` naming ``namespace`` (``prefix``, ``run``) for a bad name, before anything is dropped."""
    seconds = check_seconds(timeout, "--timeout", positive=True)
    assert seconds is not None  # (None only where no_limit)
    for name in names:
        if how != "namespace" and name == "":
            raise ValueError(f"{how} must not be empty: it would drop every namespace (name them, or 'global')")
        check_name(name, how)
    key = env_server_key()  # (what is said of it names TIGER_SERVER_KEY)
    url = check_connect_url(url)
    tables = request_once(url, Stats(1, checksum=False), seconds, key).result["tables"]
    held = {namespace for namespaces in tables.values() for namespace in namespaces}
    if how == "namespace":
        targets = list(dict.fromkeys(names))
    elif how == "prefix":
        targets = sorted(ns for ns in held if ns.startswith(tuple(names)))
    else:
        runs = {f"tiger-run:{run}" for run in names}
        targets = sorted(ns for ns in held if ns in runs or ns.startswith(tuple(f"{run}:" for run in names)))
    if not targets:
        shown = " or ".join(_printable(n) for n in names)
        return [f"no namespace of run {shown}" if how == "run" else f"no namespace starts with {shown}"]
    lines = []
    for i, namespace in enumerate(targets, 1):
        request_once(url, ClearTable(2 * i, ONCE_TABLE, namespace), seconds, key)  # (a Drop keeps once keys)
        request_once(url, Drop(2 * i + 1, namespace), seconds, key)
        lines.append(f"dropped {_printable(namespace)}: {_counted(_records(tables, namespace))}")
    return lines


def keygen(directory: str) -> str:
    """Write a CurveZMQ key pair into ``directory``; returns the public key clients need."""
    import zmq

    public, secret = zmq.curve_keypair()
    remedy = "free space there, or write the pair into a directory on a file system with room"
    try:
        with room_for(directory, remedy):
            os.makedirs(directory, exist_ok=True)
    except FileExistsError:  # (a file there: said as a bare "[Errno 17] File exists", a user trial)
        raise FileExistsError(in_the_way(directory) or f"{directory} is not a directory") from None
    key_path = os.path.join(directory, "tiger.key")
    try:
        with room_for(key_path, remedy):
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # (said as a bare "[Errno 17] File exists": a user trial)
        raise FileExistsError(
            f"{key_path} exists already: tiger keygen never overwrites a key (its writer and clients use it); "
            "remove it first, or write the new pair into another directory"
        ) from None
    try:  # (a key cut short by a full disk was left, and every later keygen there refused: "exists already")
        with room_for(key_path, remedy), os.fdopen(fd, "w") as f:
            f.write(f"public: {public.decode()}\nsecret: {secret.decode()}\n")
        write_whole(os.path.join(directory, "tiger.pub"), f"public: {public.decode()}\n", remedy)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(key_path)
        raise
    return public.decode()


def format_run_stats(client: Client, namespace: str = GLOBAL) -> str:
    """``pytest --tiger-stats``: writes applied, the data directory (as ``tiger stats`` shows it), records per
    table, the run's once-keys (in ``namespace``) and who built them."""
    stats = client.stats()
    client.sync()
    lines = [f"writer {stats['url']}: {stats['seq']} writes applied in epoch {stats['epoch']}"]
    lines += [f"  {line}" for line in _data_lines(stats.get("data"))]  # (a writer given by --tiger-url may keep a data directory)
    for table, namespaces in stats["tables"].items():
        if not table.startswith(RESERVED_PREFIX):
            lines.append(f"  {_printable(table)}: {sum(namespaces.values())} records in {len(namespaces)} namespaces")
    keys = [r for r in client.replica.store.ordered(ONCE_TABLE, namespace) if well_formed_once(r) is not None]
    lines.append(f"once-keys: {len(keys)}")
    for record in reversed(keys):
        state = record["state"]
        error = record.get("error")
        if state == "failed" and error:  # (a factory's pytest.skip was listed as "failed", bare)
            state = f"failed ({_printable(str(error[0]))}: {_printable(str(error[1]))[:80]})"
        lines.append(f"  {_printable(record['id'])}: {state} by {_printable(str(record.get('by')))}")
    return "\n".join(lines)


def _printable(name: str) -> str:
    """A table or namespace name as one cell of a table printed to a terminal: the name itself, or its
    repr when it holds what would break the layout or the terminal (a newline, NUL, other controls), or
    begins or ends with a space (a name of spaces showed as a blank cell)."""
    return name if name.isprintable() and name.strip() == name else repr(name)  # (" " made a blank cell)


def _data_lines(data: dict | None) -> list[str]:  # type: ignore[type-arg]
    """The data directory's lines of ``tiger stats``: where, how it syncs, and whether it takes writes (its
    fault: ``stats()`` said the directory was removed, ``tiger stats`` said nothing of it)."""
    if data is None:
        return ["data     none (memory only)"]
    lines = [
        f"data     {_printable(data['path'])}",
        f"fsync    {data['fsync']}",
        f"log      {data['log_bytes']} bytes",
        f"fault    {'none' if data['fault'] is None else _printable(data['fault']) + ': writes are refused'}",
    ]
    compacting = data.get("compacting")
    if compacting is not None:
        lines.append(f"compacting  a snapshot of {compacting['records']} records, {compacting['bytes_written']} bytes written")
    return lines


def _lease_lines(leases: dict | None) -> list[str]:  # type: ignore[type-arg]
    """The leases' lines of ``tiger stats``: namespaces leased, and each one whose clients are all silent, with
    when it is dropped (a killed run's namespaces stay for the lease grace: this says why, and until when)."""
    if not leases or not leases["namespaces"]:
        return []
    ending = leases["ending"]
    n = leases["namespaces"]
    lines = [f"leases   {n} namespace{'' if n == 1 else 's'} leased, grace {leases['grace']:g} s, {len(ending)} ending"]
    lines += [
        f"         {_printable(ns)} dropped in {seconds:g} s unless a client leasing it is heard"
        for ns, seconds in ending.items()
    ]
    return lines


def _records(tables: dict[str, dict[str, int]], namespace: str | None = None) -> str:
    """Records in ``tables`` (the counts of ``stats()``; one ``namespace``'s, or all), yours then tiger's own
    apart (its leases and once keys: ``records 6`` was said of 2 records of the user's)."""
    mine = theirs = 0
    for table, namespaces in tables.items():
        n = sum(namespaces.values()) if namespace is None else namespaces.get(namespace, 0)
        if table.startswith(RESERVED_PREFIX):
            theirs += n
        else:
            mine += n
    return f"{mine}" + (f" (and {theirs} of tiger's own: leases, once keys)" if theirs else "")


def _counted(text: str) -> str:
    """``_records``'s text as a count of records: ``1 record``, ``2 records (and ...)``."""
    n, _, rest = text.partition(" ")
    return f"{n} record{'' if n == '1' else 's'}" + (f" {rest}" if rest else "")


def _awaited(n: int) -> str:
    """What ``tiger stats`` adds to the clients' line for the clients a writer started on its data directory
    still waits to hear from (once builders and lease holders it stored: about 3 s, then taken for gone)."""
    return f" (and {n} awaited since the writer started on its data directory)" if n else ""


def format_stats(stats: dict) -> str:  # type: ignore[type-arg]
    lines = [
        f"url      {stats['url']}",
        f"pid      {stats['pid']}",
        f"epoch    {stats['epoch']}",
        f"seq      {stats['seq']}",
        f"uptime   {stats['uptime']:.1f} s",
        f"clients  {stats['clients']}" + _awaited(stats.get("awaited", 0)),
        f"records  {_records(stats['tables'])}",
        *_lease_lines(stats.get("leases")),
        *_data_lines(stats.get("data")),
    ]
    rows = [(_printable(t), _printable(ns), n) for t, namespaces in stats["tables"].items() for ns, n in namespaces.items()]
    if rows:
        wt = max(5, *(len(t) for t, _, _ in rows))
        wn = max(9, *(len(ns) for _, ns, _ in rows))
        lines += ["", f"{'table':<{wt}}  {'namespace':<{wn}}  records"]
        lines += [f"{t:<{wt}}  {ns:<{wn}}  {n:>7}" for t, ns, n in rows]
    else:
        lines += ["", "(no records)"]
    return "\n".join(lines)
