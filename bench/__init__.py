"""tiger's benchmark suite: tiger side by side with its floors and its peers, in one run.

Run it from the repository root (after ``pip install -e '.[bench]'``)::

    python -m bench               # every scenario, about 5 minutes on 2 cores
    python -m bench --quick       # every scenario, smaller, under a minute
    python -m bench --only read   # one scenario
    python -m bench --out DIR     # write results somewhere else than bench/results/

Each scenario writes ``<out>/<scenario>.json`` (the exact command, the machine,
the method, every figure, the targets) and ``<out>/<scenario>.png``. The
committed files in ``bench/results/`` were produced by ``python -m bench``.

Scenarios: ``read``, ``write``, ``aio``, ``batch``, ``writers``, ``fanout``, ``feed``, ``join``, ``join-stall``,
``xdist``, ``plugin``.
Comparators (each skipped with a one-line reason when absent): a plain ``dict``
(the read floor), a raw pyzmq REQ/REP round trip (the write floor),
``multiprocessing.Manager().dict()``, redis, diskcache, sqlite3 in WAL mode,
UltraDict. Floors that bound what tiger's own design can reach, measured in the
same run: a Python method whose body is one dict lookup (any read API that is a
Python call), REQ/REP plus the msgpack codec at both ends and a publish (the
least work of a write here), the msgpack codec alone per batch size, one
msgpack blob decoded into a dict in a fresh process (a join), the same
snapshot bytes decoded by 4 processes at once (what the cores allow 4 joins), a
DEALER round trip waited for blocking and awaited on a pyzmq asyncio socket (what
awaiting a write allows), and a thread woken through a Condition vs an asyncio task
through call_soon_threadsafe (what a feed's reader allows).

Nothing here is collected by pytest and nothing asserts a timing: targets are
evaluated and reported as met or missed.
"""
