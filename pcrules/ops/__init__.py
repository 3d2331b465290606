"""Operations: queries over the decision log, the ops dashboard's view, and the Voila launcher.

The view's names are also reachable here, as they were when this was one module (imported on first use).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from importlib import import_module

    view = import_module(f"{__name__}.view")
    try:
        return getattr(view, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
