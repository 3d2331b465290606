"""Shared session fixtures and the marker alias. Plain helpers (spec and event builders) stay in helpers.py.

* ``worlds(visitors=..., seed=..., days=...)``: ``pcrules.world.generate`` once per argument set for the
  whole session. The World is shared by every test that asks for the same arguments, so a test may read it
  and never change it: one that changes events (``.loc[...] = ``, ``inplace=True``, new columns) copies
  first (``world.events.copy()``) or calls ``generate`` itself. At the end of the session every shared
  world is checked against a fingerprint taken when it was made: a test that changed one fails the run.
* ``redis_server``: one throw-away redis-server for the tests that only need *a* Redis (each uses a key
  prefix or a database of its own). Tests that stop, stall, flush or reconfigure Redis start their own.
* ``postgres_server``: one throw-away PostgreSQL (tests/pgserver.py); ``new_database(name)`` gives a URL.

Markers (declared in pyproject.toml; ``make test-quick`` leaves out browser, notebook, slow and faults):
``chaos`` is an alias of ``faults``, added here to every faults test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pgserver import postgres_server  # noqa: F401  (the postgres_server fixture: tests/pgserver.py)
from rediscluster import redis_cluster  # noqa: F401 - the session's Redis Cluster (tests/rediscluster.py)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("faults") is not None and item.get_closest_marker("chaos") is None:
            item.add_marker(pytest.mark.chaos)


# --------------------------------------------------------------------------------------------- worlds


def _fingerprint(world: Any) -> tuple:
    import pandas as pd

    frames = (world.events, world.page_views, world.offers)
    return tuple((tuple(f.columns), tuple(map(str, f.dtypes)), f.shape, int(pd.util.hash_pandas_object(f).sum()))
                 for f in frames) + (repr(world.config),)


@pytest.fixture(scope="session")
def worlds() -> Iterator[Callable[..., Any]]:
    """``worlds(visitors=1500, seed=11)``: the generated World for these arguments, made once per session
    and shared (read it, never change it)."""
    from pcrules.world import generate

    made: dict[tuple, tuple[Any, tuple]] = {}

    def world(*, visitors: int, seed: int, days: int = 7) -> Any:
        key = (visitors, seed, days)
        if key not in made:
            w = generate(visitors=visitors, seed=seed, days=days)
            made[key] = (w, _fingerprint(w))
        return made[key][0]

    yield world
    changed = [key for key, (w, fingerprint) in made.items() if _fingerprint(w) != fingerprint]
    assert not changed, (f"a test changed a shared world (visitors, seed, days) = {changed}: copy it first "
                         f"(world.events.copy()) or generate one of its own")


# --------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A redis-server for the session (fails, never skips, without one: .ci/run installs it)."""
    from pcrules.server._procs import REDIS_SERVER, RedisServer

    if not Path(REDIS_SERVER).exists():
        pytest.fail(f"redis-server is needed for these tests and was not found at {REDIS_SERVER}: "
                    f"apt-get install -y redis-server (.ci/run does), or set PCRULES_REDIS_SERVER", pytrace=False)
    with RedisServer() as server:
        yield server
