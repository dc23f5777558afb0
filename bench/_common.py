"""What every scenario shares: records, the timing method, statistics, child processes, the machine."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import random
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SEED = 20240605

# -- progress ------------------------------------------------------------------------

_started = time.monotonic()


def progress(scenario: str, message: str) -> None:
    """One line per scenario and step, on stderr (stdout carries the results table)."""
    print(f"[{time.monotonic() - _started:6.1f}s] {scenario:<8} {message}", file=sys.stderr, flush=True)


# -- records -------------------------------------------------------------------------

_CURRENCIES = ("usd", "eur", "gbp", "jpy")
_INTERVALS = ("day", "week", "month", "year")
_TIERS = ("basic", "pro", "enterprise")


def make_record(n: int, rng: random.Random, tag: str = "") -> dict[str, Any]:
    """A Stripe-plan-like record of about 10 fields (about 250 bytes as msgpack)."""
    return {
        "id": f"plan_{tag}{n:016x}",
        "object": "plan",
        "active": rng.random() < 0.9,
        "amount": rng.randrange(100, 100_000),
        "currency": rng.choice(_CURRENCIES),
        "interval": rng.choice(_INTERVALS),
        "interval_count": rng.choice((1, 1, 1, 3, 6, 12)),
        "livemode": False,
        "nickname": f"Plan {n} ({rng.choice(_TIERS)})",
        "product": f"prod_{rng.getrandbits(56):014x}",
        "metadata": {"tier": rng.choice(_TIERS), "seats": str(rng.randrange(1, 500))},
        "created": 1_700_000_000 + n,
    }


def make_records(count: int, tag: str = "", start: int = 0, seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}-{tag}-{start}")
    return [make_record(n, rng, tag) for n in range(start, start + count)]


def fresh_records(id_prefix: str, tag: str) -> Callable[[], dict[str, Any]]:
    """A maker of records never made before: copies of 500 made ones, each with a new id
    (``id_prefix`` + 14 hex digits)."""
    pool = make_records(500, tag=tag)
    made = 0

    def fresh() -> dict[str, Any]:
        nonlocal made
        made += 1
        r = dict(pool[made % len(pool)])
        r["id"] = f"{id_prefix}{made:014x}"
        return r

    return fresh


def missing_ids(count: int) -> list[str]:
    return [f"plan_missing{n:012x}" for n in range(count)]


def shuffled(items: Sequence[Any], seed: int = SEED) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


# -- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summary(values: Sequence[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "median": percentile(s, 50),
        "p99": percentile(s, 99),
        "max": float(s[-1]) if s else math.nan,
        "mean": sum(s) / len(s) if s else math.nan,
        "samples": len(s),
    }


# -- the timing method -------------------------------------------------------------------

TIMING_METHOD = (
    "Per-op latency: ops are timed in batches with time.perf_counter_ns around a plain for-loop "
    "(compiled like timeit, gc disabled), and each batch's time is divided by its op count; the "
    "batch size is chosen so a batch takes about {batch_us} us (1 op per batch for ops slower than "
    "that), so timer overhead is negligible. median/p99/max are over the per-op figure of each "
    "batch (nearest rank), after warm-up batches that are not counted. Subjects are measured in interleaved "
    "rounds (a round of each in turn, several times), so noise from other work on the machine is shared among "
    "them. The loop's own cost (an empty loop, reported as 'empty loop') is included in every figure, as timeit does."
)
BATCH_NS = 50_000

_LOOP = """
def batch(items, target, _clock=_clock):
    t0 = _clock()
    for k in items:
        {stmt}
    return _clock() - t0
"""


def _compile(stmt: str) -> Callable[[Sequence[Any], Any], int]:
    namespace: dict[str, Any] = {"_clock": time.perf_counter_ns}
    exec(_LOOP.format(stmt=stmt), namespace)
    return namespace["batch"]  # type: ignore[no-any-return]


class Sampler:
    """Per-op timings of one statement, gathered in batches over one or more rounds.

    ``items`` is a list to cycle through (reads), or a function ``n -> n fresh items``
    (writes: every op writes a new record). The batch size is calibrated once, so
    that a batch takes about ``batch_ns``; rounds of different subjects can then be
    interleaved (``take`` one round of each in turn), so a burst of noise on a
    shared machine lands on every subject instead of on one.
    """

    def __init__(
        self,
        stmt: str,
        target: Any,
        items: Sequence[Any] | Callable[[int], Sequence[Any]],
        batch_ns: int = BATCH_NS,
        batch: int | None = None,
        again: bool = False,
    ):
        self._run = _compile(stmt)
        self._target = target
        self._items = items
        self._fresh = callable(items)
        self._again = again  # the same items in every batch on purpose (warm memory): no one-pass limit
        self._next = 0
        self.per_op: list[float] = []
        probe = 8 if self._fresh else min(16, len(items))  # type: ignore[arg-type]
        self._run(self._take(probe), target)  # a first call: warms caches and connections
        if batch is not None:  # the caller fixes it: the same for every subject of a scenario
            self.batch = batch
            return
        # the fastest of a few probes: one cold probe would make the batch too small, and then a
        # batch's fixed cost (the loop's first, cold iteration) would weigh on every op of it
        est = max(1.0, min(self._run(self._take(probe), target) for _ in range(5)) / probe)
        self.batch = max(1, min(int(batch_ns / est), 100_000 if self._fresh else len(items)))  # type: ignore[arg-type]

    def _take(self, n: int) -> Sequence[Any]:
        if self._fresh:
            return self._items(n)  # type: ignore[operator,no-any-return]
        pool: Sequence[Any] = self._items  # type: ignore[assignment]
        start = self._next % len(pool)
        self._next = start + n
        chunk = pool[start : start + n]
        return chunk if len(chunk) == n else list(chunk) + list(pool[: n - len(chunk)])

    def take(self, batches: int, budget: float, warmup: int = 3) -> None:
        """One round: ``warmup`` uncounted batches, then up to ``batches`` (at least 5; fewer once ``budget`` s
        ran out or, for a list of items, once the round went through the whole list: a fast subject must not
        come back to items it made hot in this round, while a slower one meets every item cold)."""
        n, run, target = self.batch, self._run, self._target
        one_pass = None if self._fresh or self._again else len(self._items)  # type: ignore[arg-type]
        gc_was = gc.isenabled()
        gc.disable()
        try:
            deadline = time.monotonic() + budget
            ops = 0
            for i in range(warmup + batches):
                ns = run(self._take(n), target)
                ops += n
                if i >= warmup:
                    self.per_op.append(ns / n)
                    if i >= warmup + 5 and (time.monotonic() > deadline or (one_pass is not None and ops >= one_pass)):
                        break
        finally:
            if gc_was:
                gc.enable()

    def summary(self, scale: float = 1.0) -> dict[str, Any]:
        """median/p99/max of the per-op figures (ns, divided by ``scale``), with the batch size and op count."""
        return {**summary([v / scale for v in self.per_op]), "batch": self.batch, "ops": self.batch * len(self.per_op)}


def time_ops(
    stmt: str,
    target: Any,
    items: Sequence[Any] | Callable[[int], Sequence[Any]],
    *,
    batches: int,
    budget: float,
    batch_ns: int = BATCH_NS,
    batch: int | None = None,
) -> dict[str, Any]:
    """Time ``stmt`` (using ``k`` for the item and ``target``) per op, in batches, in one round."""
    sampler = Sampler(stmt, target, items, batch_ns, batch=batch)
    sampler.take(batches, budget, warmup=max(3, batches // 20))
    return sampler.summary()


def empty_loop(items: Sequence[Any], batches: int, batch: int | None = None) -> dict[str, Any]:
    return time_ops("pass", None, items, batches=batches, budget=0.2, batch=batch)


def time_calls(call: Callable[[], Any], *, count: int, budget: float) -> list[float]:
    """Seconds per call of ``call()``, each timed alone (for ops of 100 us and more)."""
    out: list[float] = []
    deadline = time.monotonic() + budget
    for _ in range(count):
        t0 = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - t0) / 1e9)
        if len(out) >= 5 and time.monotonic() > deadline:
            break
    return out


# -- results -------------------------------------------------------------------------------

LOWER, HIGHER = "lower", "higher"


@dataclass
class Result:
    """One scenario's figures, as written to ``<scenario>.json``."""

    scenario: str
    title: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(
        self,
        case: str,
        subject: str,
        role: str,
        unit: str,
        stats: dict[str, Any] | float,
        better: str = LOWER,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a figure. ``role`` is "tiger", "floor" or "peer"; ``stats`` a summary() or one value."""
        if not isinstance(stats, dict):
            stats = {"median": float(stats)}
        row = {"case": case, "subject": subject, "role": role, "unit": unit, "better": better, **stats, **extra}
        self.rows.append(row)
        return row

    def find(self, case: str, subject: str | None = None, role: str | None = None) -> dict[str, Any] | None:
        for row in self.rows:
            if row["case"] == case and (subject is None or row["subject"] == subject) and (role is None or row["role"] == role):
                return row
        return None

    def target(
        self, name: str, measured: float | None, limit: float, unit: str, *, at_most: bool, detail: str = "", issue: int = 5
    ) -> None:
        """A target from an issue (5 unless said): evaluated and reported, never asserted."""
        if measured is None or math.isnan(measured):
            met = None
        else:
            met = measured <= limit if at_most else measured >= limit
        self.targets.append(
            {
                "target": name,
                "measured": measured,
                "limit": limit,
                "unit": unit,
                "at_most": at_most,
                "met": met,
                "detail": detail,
                "issue": issue,
            }
        )

    def skip(self, subject: str, reason: str, scenario: str | None = None) -> None:
        reason = " ".join(str(reason).split())[:200]
        self.skipped[subject] = reason
        progress(scenario or self.scenario, f"skip {subject}: {reason}")


# -- the machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tiger_commit() -> str | None:
    """The commit of the tiger tree measured (read-only git), "+dirty" when tiger/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "tiger"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    import msgpack
    import zmq

    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "tiger": _version("tiger"),
        "tiger_commit": _tiger_commit(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "dont_write_bytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cores']} cores {m['cpu']}, {m['os']}, {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}, "
        f"msgpack {m['msgpack']}, tiger {m['tiger']} at {m.get('tiger_commit') or '?'}, "
        f"load average {m['loadavg_at_start'][0]} at start, {m['date']}"
        + (
            " (PYTHONDONTWRITEBYTECODE is set here: the bench compiles tiger's modules first, as installing or a first "
            "import would, so each process it starts loads them compiled)"
            if m.get("dont_write_bytecode")
            else ""
        )
    )


def compile_tiger() -> None:
    """Write the bytecode of tiger's modules (compileall), which ``pip install`` of a wheel or a first import
    writes, and which an editable install under PYTHONDONTWRITEBYTECODE never gets: without it, every process
    the bench starts compiles them again (about 30 ms on a join)."""
    import compileall

    import tiger

    compileall.compile_dir(str(Path(tiger.__file__).parent), quiet=1)


# -- child processes --------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for every child: this repo importable, no TIGER_URL or xdist variables inherited."""
    env = {k: v for k, v in os.environ.items() if k != "TIGER_URL" and not k.startswith("PYTEST_XDIST")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


class Children:
    """Child processes of one step: every one is stopped (by pid) when the block ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("env", child_env())
        kwargs.setdefault("cwd", str(REPO))
        proc = subprocess.Popen(list(args), text=True, bufsize=1, **kwargs)
        self.procs.append(proc)
        return proc

    def worker(self, *args: str) -> subprocess.Popen[str]:
        """``python -m bench._worker ARGS``: speaks JSON lines on stdin/stdout."""
        return self.start([sys.executable, "-m", "bench._worker", *args])

    def stop_all(self, timeout: float = 5.0) -> None:
        for proc in self.procs:
            stop(proc, timeout)
        self.procs.clear()


def stop(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Stop one child by its pid: close its stdin (workers exit on EOF), SIGTERM, then SIGKILL."""
    if proc.poll() is None and proc.stdin is not None:
        try:
            proc.stdin.close()
            proc.wait(min(timeout, 1.0))
        except (OSError, subprocess.TimeoutExpired):
            pass
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def send(proc: subprocess.Popen[str], message: Any) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()


def receive(proc: subprocess.Popen[str], timeout: float) -> Any:
    """The next JSON line a worker prints; RuntimeError if it exits or stays silent."""
    message = try_receive(proc, timeout)
    if message is None:
        raise RuntimeError(f"worker {proc.args[-3:]} (pid {proc.pid}) said nothing within {timeout:g}s")
    return message


def try_receive(proc: subprocess.Popen[str], timeout: float) -> Any:
    """The next JSON line a worker prints, or None if it prints nothing within ``timeout``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {proc.args[-3:]} (pid {proc.pid}) exited with code {proc.wait()}")
    return json.loads(line)


def receive_all(procs: Sequence[subprocess.Popen[str]], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    return [receive(p, max(0.1, deadline - time.monotonic())) for p in procs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; ru_maxrss elsewhere is a peak, not current)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def step(scenario: str, message: str) -> Iterator[None]:
    t0 = time.monotonic()
    progress(scenario, f"{message} ...")
    yield
    progress(scenario, f"{message}: done in {time.monotonic() - t0:.1f} s")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def _jsonable(obj: Any) -> Any:
    """Strict JSON: NaN and infinities become null, paths strings, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = [
    "DEFAULT_OUT",
    "HIGHER",
    "LOWER",
    "REPO",
    "SEED",
    "TIMING_METHOD",
    "Children",
    "Result",
    "Sampler",
    "child_env",
    "empty_loop",
    "free_port",
    "machine",
    "machine_line",
    "make_record",
    "make_records",
    "missing_ids",
    "percentile",
    "progress",
    "receive",
    "receive_all",
    "rss_bytes",
    "send",
    "shuffled",
    "step",
    "stop",
    "summary",
    "time_calls",
    "time_ops",
    "try_receive",
    "write_json",
]
