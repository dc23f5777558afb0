"""The public names: pinned, so removing or renaming one is a deliberate act."""

from __future__ import annotations

import importlib

import pytest

import tiger


def test_public_names_are_pinned():
    assert sorted(tiger.__all__) == [
        "AlreadyExists",
        "Batch",
        "BatchTable",
        "Change",
        "Client",
        "Feed",
        "FeedOverflow",
        "FrozenList",
        "HandshakeFailed",
        "NoRoom",
        "NotFound",
        "OnceFailed",
        "Page",
        "Pending",
        "ProtocolError",
        "Record",
        "Server",
        "Table",
        "TigerError",
        "Timeout",
        "Unavailable",
        "connect",
        "current_namespace",
        "namespace",
        "serve",
        "thaw",
    ]
    assert set(tiger._LAZY) <= set(tiger.__all__)  # imported on first use, and public
    for name in tiger.__all__:  # every public name resolves
        assert getattr(tiger, name).__name__ == name
    assert dir(tiger) == sorted(tiger.__all__)


@pytest.mark.parametrize("name", sorted(tiger._LAZY))
def test_every_lazy_name_resolves_through_the_module_getattr(monkeypatch, name):
    # Earlier tests (and the plugin) have resolved most lazy names already, and a resolved one is a plain
    # attribute: without removing it first, this would not run tiger.__getattr__ at all.
    monkeypatch.delitem(vars(tiger), name, raising=False)
    assert name not in vars(tiger)
    value = getattr(tiger, name)
    assert value is getattr(importlib.import_module(tiger._LAZY[name]), name)
    assert value.__name__ == name
    assert vars(tiger)[name] is value  # once imported, a plain attribute


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'tiger' has no attribute 'nope'"):
        tiger.nope  # noqa: B018
    assert not hasattr(tiger, "_table_rules")


def test_error_hierarchy():
    assert issubclass(tiger.NotFound, tiger.TigerError) and issubclass(tiger.NotFound, KeyError)
    assert issubclass(tiger.Timeout, tiger.TigerError) and issubclass(tiger.Timeout, TimeoutError)
    assert issubclass(tiger.AlreadyExists, tiger.TigerError)
    assert issubclass(tiger.Unavailable, tiger.TigerError)
    assert issubclass(tiger.OnceFailed, tiger.TigerError)
    assert issubclass(tiger.FeedOverflow, tiger.TigerError)
    assert issubclass(tiger.HandshakeFailed, tiger.Unavailable)  # (code catching Unavailable still catches it)
    assert issubclass(tiger.ProtocolError, tiger.TigerError) and issubclass(tiger.ProtocolError, ValueError)
    # every public exception, present and future, is a TigerError
    errors = [getattr(tiger, n) for n in tiger.__all__ if isinstance(getattr(tiger, n), type)]
    errors = [e for e in errors if issubclass(e, BaseException)]
    assert sorted(e.__name__ for e in errors) == [
        "AlreadyExists",
        "FeedOverflow",
        "HandshakeFailed",
        "NoRoom",
        "NotFound",
        "OnceFailed",
        "ProtocolError",
        "TigerError",
        "Timeout",
        "Unavailable",
    ]
    assert all(issubclass(e, tiger.TigerError) for e in errors)
    assert str(tiger.NotFound("plans 'x' is not here")) == "plans 'x' is not here"  # not KeyError's quoting


def test_no_room_could_not_be_unpickled():
    # a NoRoom raised in a process pool's worker (multiprocessing pickles it to the parent) failed to unpickle:
    # "NoRoom.__init__() missing 2 required positional arguments", hiding the error itself
    import errno
    import pickle

    error = tiger.NoRoom("no room to write /tmp/run/writer", "/tmp/run/writer", errno.ENOSPC)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.path, again.errno) == (tiger.NoRoom, str(error), error.path, errno.ENOSPC)
