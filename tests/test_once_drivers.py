"""Once's logic is written once, as generators of effects that a driver performs: here, driven by hand."""

from __future__ import annotations

import math
import types

import pytest

import tiger
from tiger import _protocol as p
from tiger import _table as t
from tiger._once import Build, Once, Write

# -- the logic, with no I/O -------------------------------------------------------------------------


class InMemory:
    """A client and its writer in one object, no sockets: once requests answered by the ``_table`` rules."""

    def __init__(self, store: t.Store, client_id: str) -> None:
        self.client_id = client_id
        self.label = f"test {client_id}"
        self._req_ids = iter(range(1, 1000))
        self.replica = types.SimpleNamespace(store=store)

    def answer(self, request: p.Request) -> p.Ok:
        store = self.replica.store
        if type(request) is p.OnceClaim:
            result, change = t.prepare_once_claim(store, request.key, request.client_id, request.by, live=set(), now=1)
        else:
            assert type(request) is p.OnceFinish and request.outcome in ("value", "error")
            value, error = (None, request.payload) if request.outcome == "error" else (request.payload, None)
            result, change = t.prepare_once_finish(store, request.key, request.client_id, value, error)
        if change is not None:
            store.apply(change)
        return p.Ok(request.req_id, "epoch", 0, change, result)


def test_the_logic_needs_no_io_a_build_and_a_failure_driven_by_hand():
    store = t.Store()
    builder, later = InMemory(store, "c1"), InMemory(store, "c2")
    factory = lambda: 1  # noqa: E731
    steps = Once()._value(builder, "k", "global", factory, None, math.inf, False)  # type: ignore[arg-type]
    claim = next(steps)
    assert type(claim) is Write and type(claim.request) is p.OnceClaim
    assert steps.send(builder.answer(claim.request)) == Build(factory, None)  # the driver runs it, not the logic
    finish = steps.send(({"v": 1}, None))
    assert type(finish) is Write and (finish.request.outcome, finish.request.payload) == ("value", {"v": 1})
    with pytest.raises(StopIteration) as done:
        steps.send(builder.answer(finish.request))
    assert done.value.value == {"v": 1}
    steps = Once()._value(later, "k", "global", lambda: 2, None, math.inf, False)  # type: ignore[arg-type]
    with pytest.raises(StopIteration) as done:  # done already: no Build asked for
        steps.send(later.answer(next(steps).request))  # type: ignore[union-attr]
    assert done.value.value == {"v": 1}

    steps = Once()._value(builder, "f", "global", lambda: 1, None, math.inf, False)  # type: ignore[arg-type]
    steps.send(builder.answer(next(steps).request))  # type: ignore[union-attr]
    failure = steps.throw(KeyError("no such fixture"))  # what the factory raised, at the Build
    assert type(failure) is Write and failure.request.outcome == "error"
    with pytest.raises(tiger.OnceFailed, match="KeyError") as failed:
        steps.send(builder.answer(failure.request))
    assert isinstance(failed.value.__cause__, KeyError)
    store.check()
