"""The analyst's side: history, the synthetic world, backtest, tuning, value and the notebooks' helpers.

Most of it needs pcrules[analysis] (numpy, pandas, scikit-learn); reading the shipped sample does not, so
nothing is imported here eagerly. The exploration helpers of notebook 01 (``explore``) are also reachable
here by name, as they were when this was one module.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from importlib import import_module

    explore = import_module(f"{__name__}.explore")
    try:
        return getattr(explore, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
