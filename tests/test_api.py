"""The public names: pinned, so removing or renaming one is a deliberate act."""

from __future__ import annotations

import tiger


def test_public_names_are_pinned():
    assert sorted(tiger.__all__) == [
        "AlreadyExists",
        "Client",
        "FrozenList",
        "NotFound",
        "OnceFailed",
        "Page",
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
    for name in tiger.__all__:  # every public name resolves (a lazy one imports its module)
        assert getattr(tiger, name).__name__ == name
    assert dir(tiger) == sorted(tiger.__all__)


def test_error_hierarchy():
    assert issubclass(tiger.NotFound, tiger.TigerError) and issubclass(tiger.NotFound, KeyError)
    assert issubclass(tiger.Timeout, tiger.TigerError) and issubclass(tiger.Timeout, TimeoutError)
    assert issubclass(tiger.AlreadyExists, tiger.TigerError)
    assert issubclass(tiger.Unavailable, tiger.TigerError)
    assert str(tiger.NotFound("plans 'x' is not here")) == "plans 'x' is not here"  # not KeyError's quoting
