"""What an offer at each event would do to the visitor's goal probability: the input of the expected uplift.

``effects=`` of :func:`pcrules.backtest.backtest`, the tuner and ``decision_value.tune`` is resolved here
against an :class:`EventTable` (:func:`resolve_effects`); the figures themselves are in
:mod:`pcrules.analysis.figures`.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping as _MappingABC
from typing import Any

import numpy as np
import pandas as pd

from .table import EventTable

__all__ = ["Effects", "EFFECT_COLUMNS", "resolve_effects", "effect_columns"]

EFFECT_COLUMNS = ("gain_if_accepted", "loss_if_not_accepted")


class Effects:
    """What an offer at each event would do to the visitor's goal probability, for expected uplift.

    ``gain_if_accepted``: the absolute rise of the goal probability if the chat is accepted;
    ``loss_if_not_accepted``: its absolute fall if the offer is declined or ignored (annoyance). An
    offer's expected effect is ``p * gain - (1 - p) * loss`` (:func:`pcrules.uplift.goal_effect`) with
    ``p`` its P(accept): the model's score, or the ground truth on a generated world.

    Built by :func:`resolve_effects` from what a caller passes as ``effects=``: see there.
    """

    def __init__(self, table: EventTable, source: Any):
        self.table = table
        self._fn: Callable[[pd.DataFrame], Any] | None = None
        self._gain: np.ndarray | None = None
        self._loss: np.ndarray | None = None
        n = table.n
        if callable(source) and not isinstance(source, (pd.DataFrame, _MappingABC)):
            self._fn = source
            self.description = f"effects from {getattr(source, '__name__', type(source).__name__)}()"
            return
        if isinstance(source, str):
            source = (source,)
        if isinstance(source, (tuple, list)):
            if not 1 <= len(source) <= 2 or not all(isinstance(c, str) for c in source):
                raise ValueError("effects: give column names (gain_if_accepted[, loss_if_not_accepted]) of the "
                                 f"events, got {source!r}")
            missing = [c for c in source if c not in table.frame.columns]
            if missing:
                raise ValueError(f"effects: the events have no column {', '.join(map(repr, missing))}")
            gain = table.frame[source[0]].to_numpy()
            loss = table.frame[source[1]].to_numpy() if len(source) > 1 else np.zeros(n)
            self._gain, self._loss = _effect_values(gain, loss, "effects")
            self.description = f"effects from the columns {', '.join(source)}"
            return
        if isinstance(source, (pd.DataFrame, _MappingABC)):
            if EFFECT_COLUMNS[0] not in source:
                raise ValueError(f"effects: expected a column {EFFECT_COLUMNS[0]!r} (and optionally "
                                 f"{EFFECT_COLUMNS[1]!r}), got {sorted(map(str, source.keys()))[:8]}")
            gain = _column(source[EFFECT_COLUMNS[0]])
            loss = _column(source[EFFECT_COLUMNS[1]]) if EFFECT_COLUMNS[1] in source else np.zeros(len(gain))
            if len(gain) != n or len(loss) != n:
                raise ValueError(f"effects: expected one row per event ({n}), got {len(gain)}")
            gain, loss = _effect_values(gain, loss, "effects")
            if table.order is not None:  # given in the input's order; the table is in time order
                gain, loss = gain[table.order], loss[table.order]
            self._gain, self._loss = gain, loss
            self.description = "effects given per event"
            return
        raise ValueError("effects: expected a frame with gain_if_accepted (and loss_if_not_accepted) per event, "
                         f"column names, or a function of the events, got {type(source).__name__}")

    def at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gain_if_accepted, loss_if_not_accepted) of `rows` (sorted positions of the table)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._fn is None:
            return self._gain[rows], self._loss[rows]  # type: ignore[index]
        if not len(rows):
            return np.zeros(0), np.zeros(0)
        frame = self.table.frame.iloc[rows].reset_index(drop=True)
        out = self._fn(frame)
        if isinstance(out, (pd.DataFrame, _MappingABC)):
            if EFFECT_COLUMNS[0] not in out:
                raise ValueError(f"effects: the function returned no {EFFECT_COLUMNS[0]!r}")
            gain = out[EFFECT_COLUMNS[0]]
            loss = out[EFFECT_COLUMNS[1]] if EFFECT_COLUMNS[1] in out else 0.0  # a frame has no .get by column
        elif isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError("effects: the function must return (gain_if_accepted, loss_if_not_accepted)")
            gain, loss = out
        else:
            gain, loss = out, 0.0
        gain = np.broadcast_to(_column(gain) if np.ndim(gain) else gain, (len(rows),))
        loss = np.broadcast_to(_column(loss) if np.ndim(loss) else loss, (len(rows),))
        return _effect_values(gain, loss, "effects (from the function)")


def _column(values: Any) -> np.ndarray:
    """One column of values as a flat array: floats as they are, anything else as objects (checked later)."""
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    return arr.ravel() if arr.dtype.kind in "fiub" else np.asarray(arr, dtype=object).ravel()


def _effect_values(gain: Any, loss: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, values in zip(EFFECT_COLUMNS, (gain, loss)):
        values = _column(values)
        if values.dtype.kind in "fiu":
            arr = values.astype(float)
        else:  # text, None, booleans: what is not a number becomes NaN and is refused below
            arr = np.array(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
                dtype=float, na_value=np.nan))  # a writable copy
            arr[np.array([isinstance(v, (bool, np.bool_)) for v in values], dtype=bool)] = np.nan
        bad = ~((arr >= -1.0) & (arr <= 1.0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: {name} must be a change of a probability, a number in [-1, 1]; "
                             f"{int(bad.sum())} value(s) are not, e.g. {values[i]!r} at position {i}")
        out.append(arr)
    return out[0], out[1]


def resolve_effects(table: EventTable, effects: Any) -> Effects | None:
    """``effects=`` of :func:`backtest`, the tuner and ``decision_value.tune`` against `table` (None: none).

    * a DataFrame (or mapping of arrays) with ``gain_if_accepted`` and optionally ``loss_if_not_accepted``
      (else 0), one row per event in the input's order: e.g. :func:`pcrules.world.event_effects`;
    * column names of the events, ``(gain, loss)`` or ``gain`` alone (they are not event fields);
    * a function of the events (a DataFrame of the rows it needs, the event columns) returning such a
      frame, a ``(gain, loss)`` pair or the gains: an analyst's assumption, e.g. by page.
    """
    if effects is None:
        return None
    if isinstance(effects, Effects):
        if effects.table is not table:
            raise ValueError("effects: resolved against another events table")
        return effects
    return Effects(table, effects)


def effect_columns(effects: Any) -> tuple[str, ...]:
    """The event columns `effects` names (to keep them out of the event fields)."""
    if isinstance(effects, str):
        return (effects,)
    if isinstance(effects, (tuple, list)) and all(isinstance(c, str) for c in effects):
        return tuple(effects)
    return ()
