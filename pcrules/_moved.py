"""Import paths from before the package was laid out in layers, kept working.

``import pcrules.backtest`` gives the very module ``pcrules.analysis.backtest`` (not a copy), so attribute
access, monkeypatching and private names behave as before. Nothing is imported until an old name is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

MOVED = {
    "pcrules.spec": "pcrules.core.spec",
    "pcrules.events": "pcrules.core.events",
    "pcrules.decision": "pcrules.core.decision",
    "pcrules.clock": "pcrules.core.clock",
    "pcrules.policy": "pcrules.core.policy",
    "pcrules.matching.result": "pcrules.core.matches",
    "pcrules.stores": "pcrules.runtime.stores.memory",
    "pcrules.redis_store": "pcrules.runtime.stores.redis",
    "pcrules.log_journal": "pcrules.runtime.log.journal",
    "pcrules.decision_log": "pcrules.runtime.log.sqlite",
    "pcrules.pseudonym": "pcrules.runtime.pseudonym",
    "pcrules.training": "pcrules.scoring.training",
    "pcrules.backtest": "pcrules.analysis.backtest",
    "pcrules.tuning": "pcrules.analysis.tuner",
    "pcrules.decision_value": "pcrules.analysis.value",
    "pcrules.world": "pcrules.analysis.world",
    "pcrules.history": "pcrules.analysis.history",
    "pcrules.replay": "pcrules.analysis.replay",
    "pcrules.sample": "pcrules.analysis.sample",
    "pcrules.demo": "pcrules.analysis.demo",
    "pcrules.uplift": "pcrules.stats.uplift",
    "pcrules.dashboard": "pcrules.ops.voila",
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: Any) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the old name's spec on the module; give it back its own.
        for old, real in list(self._specs.items()):
            if real.name == module.__name__:
                module.__spec__ = real
                del self._specs[old]


def forward_to(package: str, module: str) -> Any:
    """A module ``__getattr__`` for `package` that answers with `module`'s names, importing it on first use
    (a package that was one module keeps its names reachable as they were)."""

    def __getattr__(name: str) -> Any:
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


def install() -> None:
    if not any(isinstance(finder, _OldNames) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldNames())
