"""The event contract is one table (core.events.CONTRACT): the runtime's door and the backtest's table check
refuse exactly what it says, field by field."""

from __future__ import annotations

import pandas as pd
import pytest

from pcrules import InvalidEvent
from pcrules.analysis.table import EventTable
from pcrules.core.events import CONTRACT, REQUIRED, validate_event

GOOD = {"visitor_id": "v", "session_id": "s", "page": "Home", "seconds_on_page": 5.0, "ts": 1_764_064_800.0,
        "pages_viewed": 3, "session_seconds": 40.0, "device": "desktop", "returning": True}


def beyond(name: str):
    rule = CONTRACT[name]
    if rule.kind == "text":
        return "x" * (int(rule.hi) + 1)
    if rule.kind == "number":
        return rule.hi * 2 if rule.hi < 1e300 else -1.0
    return "yes"  # not a bool


@pytest.mark.parametrize("name", list(CONTRACT))
def test_one_table_drives_the_runtime_and_the_backtest(name):
    bad = {**GOOD, name: beyond(name)}
    with pytest.raises(InvalidEvent) as refused:
        validate_event(bad, lambda: GOOD["ts"])
    assert refused.value.field == name
    table = EventTable(pd.DataFrame([GOOD, bad]))
    assert table.valid.tolist() == [True, False]
    assert table.refusals[1].startswith(f"{name}:")


def test_required_fields_are_the_tables():
    assert REQUIRED == ("visitor_id", "session_id", "page", "seconds_on_page")
    for name in REQUIRED:
        with pytest.raises(InvalidEvent) as refused:
            validate_event({k: v for k, v in GOOD.items() if k != name}, lambda: GOOD["ts"])
        assert refused.value.field == name
