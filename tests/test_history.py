"""Loading real history: every kind of bad row is reported by its row (and CSV line) with what was
done to it; only missing columns are fatal; nothing else raises."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from pcrules import PcrulesError
from pcrules.events import validate_event
from pcrules.history import (
    HistoryError,
    LoadReport,
    MissingColumns,
    UnknownFormat,
    check_columns,
    load_events,
    load_offers,
    load_page_views,
)

MAPPING = {"ts": "Time", "visitor_id": "Visitor", "session_id": "Session", "page": "Page",
           "seconds_on_page": "Secs", "pages_viewed": "PV", "session_seconds": "SessSecs", "device": "Dev",
           "returning": "Ret", "response": "Answer", "response_delay_s": "Delay"}
LONG_ID = "v" * 130
# line 1 is the header; row n is the n-th data row. Line 11 is blank (no row), so from there line = row + 2.
DIRTY_EVENTS = f"""Time,Visitor,Session,Page,Secs,PV,SessSecs,Dev,Ret,Answer,Delay,Extra
1764057600,v1,s1,Home,0,1,0,desktop,False,,,x
1764057615,v1,s1,Home,15,1,15,desktop,False,accept,4.5,x
1764057630,,s1,Home,30,1,30,desktop,False,,,x
1764057645,v2,s2,Plans,abc,1,0,mobile,True,,,x
1764057650,v2,s2,Plans,-4,1,5,mobile,True,,,x
1764057620,v3,s3,FAQ,5,two,-1,tablet,maybe,perhaps,-2,x
2025-11-25T08:05:00Z,v4,s4,Support,7,3,7,desktop,yes,declined,3,x
1764057700,v5,s5,Checkout,8,1,8,desktop
notatime,v6,s6,Home,1,1,1,desktop,no,,,x

1764057710,v7,s7,Home,2,-1,2,desktop,1,none,,x
99999999999,v8,s8,Home,0,1,0,desktop,0,,,x
1764057720,v9,s9,Home,1e9,1,0,desktop,0,,,x
1764057730,{LONG_ID},s10,Home,0,1,0,desktop,0,,,x
1764057740,v11,s11,,0,1,0,desktop,0,,,x
1764057750,v12,s12,Home,NaN,1,0,desktop,0,,,x
1764057760,v1\x013,s13,Home,0,1,0,desktop,0,,,x
"""

# (row, column, problem, action) for every problem in DIRTY_EVENTS.
EXPECTED = [
    (3, "visitor_id", "missing_value", "dropped"),
    (4, "seconds_on_page", "wrong_type", "dropped"),
    (5, "seconds_on_page", "negative", "dropped"),
    (6, "pages_viewed", "wrong_type", "coerced"),
    (6, "session_seconds", "negative", "coerced"),
    (6, "returning", "wrong_type", "coerced"),
    (6, "response", "unknown_value", "coerced"),
    (6, "response_delay_s", "negative", "coerced"),
    (8, None, "bad_line", "dropped"),
    (9, "ts", "wrong_type", "dropped"),
    (10, "pages_viewed", "out_of_range", "coerced"),
    (10, "ts", "unsorted", "sorted"),
    (11, "ts", "out_of_range", "dropped"),
    (12, "seconds_on_page", "out_of_range", "dropped"),
    (13, "visitor_id", "too_long", "dropped"),
    (14, "page", "missing_value", "dropped"),
    (15, "seconds_on_page", "missing_value", "dropped"),
    (16, "visitor_id", "wrong_type", "dropped"),
]


def _problems(report: LoadReport) -> list[tuple]:
    return sorted(((p.row, p.column, p.problem, p.action) for p in report.problems if p.row is not None),
                  key=lambda x: (x[0], x[1] or ""))


def _write(path, text: str) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_every_kind_of_bad_row_is_reported_by_row_and_line(tmp_path, name):
    path = tmp_path / name
    _write(path, DIRTY_EVENTS)
    frame, report = load_events(path, columns=MAPPING)

    assert _problems(report) == sorted(EXPECTED, key=lambda x: (x[0], x[1] or ""))
    lines = {(p.row, p.column): p.line for p in report.problems if p.row is not None}
    assert lines[(3, "visitor_id")] == 4 and lines[(9, "ts")] == 10
    assert lines[(10, "ts")] == 12 and lines[(16, "visitor_id")] == 18, "the blank line 11 is no row"
    assert report.rows_read == 16
    assert report.rows(action="dropped") == [3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16]
    assert report.rows(action="coerced") == [6, 10]
    assert report.rows(problem="unsorted") == [10]
    assert (report.rows_kept, report.rows_dropped, report.rows_coerced, report.rows_unsorted) == (5, 11, 2, 1)
    assert not report.ok
    assert [(p.problem, p.detail) for p in report.problems if p.row is None] == [
        ("ignored_column", "column 'Extra' is not part of the events schema")]

    # What was kept: rows 1, 2, 6, 10, 7 in time order; coerced values are missing; ISO time and synonyms parsed.
    assert frame["visitor_id"].tolist() == ["v1", "v1", "v3", "v7", "v4"]
    assert frame["ts"].tolist() == [1764057600.0, 1764057615.0, 1764057620.0, 1764057710.0, 1764057900.0]
    v3 = frame.iloc[2]
    assert pd.isna(v3["pages_viewed"]) and pd.isna(v3["session_seconds"]) and pd.isna(v3["returning"])
    assert pd.isna(v3["response"]) and pd.isna(v3["response_delay_s"])
    assert frame["response"].tolist()[1] == "accept" and frame["response"].tolist()[4] == "decline"
    assert pd.isna(frame["response"].tolist()[3]), "'none' means no answer"
    assert frame["returning"].tolist()[3:] == [True, True]
    assert str(frame["pages_viewed"].dtype) == "Int64" and str(frame["returning"].dtype) == "boolean"


def test_the_report_prints_each_problem_with_its_row(tmp_path):
    path = tmp_path / "events.csv"
    _write(path, DIRTY_EVENTS)
    report = load_events(path, columns=MAPPING).report
    text = str(report)
    assert text.splitlines()[0] == (f"{path} (events): 16 rows read, 5 kept, 11 dropped, 2 coerced, "
                                    "1 out of time order (sorted)")
    for expected in (
        "row 3 (line 4): visitor_id: missing -> row dropped",
        "row 4 (line 5): seconds_on_page: 'abc' is not a number -> row dropped",
        "row 5 (line 6): seconds_on_page: negative duration '-4' -> row dropped",
        "row 6 (line 7): pages_viewed: 'two' is not a number -> set to missing",
        "row 8 (line 9): 8 field(s) where the header has 12 -> row dropped",
        "row 9 (line 10): ts: 'notatime' is not a timestamp (epoch seconds or ISO-8601) -> row dropped",
        "row 10 (line 12): ts: 1764057710.000 is earlier than a previous row's 1764057900.000 -> rows sorted by time",
        "row 13 (line 15): visitor_id: 130 characters (at most 128) -> row dropped",
        "row 16 (line 18): visitor_id: 'v1\\x013' holds control characters -> row dropped",
    ):
        assert expected in text, f"missing {expected!r} in:\n{text}"
    short = report.format(limit=3)
    assert "... and 16 more problem(s)" in short and "negative/dropped 1" in short
    table = report.to_frame()
    assert list(table.columns) == ["row", "line", "column", "problem", "detail", "action"] and len(table) == 19


def test_quoted_fields_spanning_lines_keep_row_and_line_exact(tmp_path):
    path = tmp_path / "quoted.csv"
    _write(path, 'ts,visitor_id,session_id,page,seconds_on_page,device\n'
                 '1764057600,v1,s1,Home,0,"desk\ntop"\n'      # row 1, lines 2-3: a newline in a field
                 '1764057610,"v2",s2,"Plans, compare",-1,mobile\n'   # row 2, line 4
                 '1764057620,v3,s3,FAQ,5\n')                  # row 3, line 5: a field short
    frame, report = load_events(path)
    assert _problems(report) == [(1, "device", "wrong_type", "coerced"), (2, "seconds_on_page", "negative", "dropped"),
                                 (3, None, "bad_line", "dropped")]
    assert [p.line for p in report.problems] == [2, 4, 5]
    assert frame["visitor_id"].tolist() == ["v1"] and pd.isna(frame["device"][0])


def test_parquet_rows_are_numbered_and_typed_columns_checked(tmp_path):
    path = tmp_path / "events.parquet"
    pd.DataFrame({
        "ts": [1764057600.0, 1764057700.0, np.nan, 1764057650.0, 1764057660.0],
        "visitor_id": ["v1", "v2", "v3", None, "v5"],
        "session_id": ["s1", "s2", "s3", "s4", "s5"],
        "page": ["Home", "Plans", "FAQ", "Home", "Checkout"],
        "seconds_on_page": [0.0, -1.0, 5.0, 1.0, np.inf],
        "pages_viewed": [2.5, 2.5, 1.0, 1.0, 1.0],
        "returning": [True, False, True, False, True],
    }).to_parquet(path)
    frame, report = load_events(path)
    # Row 2's bad pages_viewed is not reported: the row is dropped anyway.
    assert _problems(report) == [(1, "pages_viewed", "out_of_range", "coerced"),
                                 (2, "seconds_on_page", "negative", "dropped"),
                                 (3, "ts", "missing_value", "dropped"), (4, "visitor_id", "missing_value", "dropped"),
                                 (5, "seconds_on_page", "wrong_type", "dropped")]
    assert all(p.line is None for p in report.problems) and "row 2: seconds_on_page" in str(report)
    assert frame["visitor_id"].tolist() == ["v1"] and pd.isna(frame["pages_viewed"][0])
    assert report.rows_coerced == 1 and report.rows_dropped == 4


def test_parquet_with_datetime_and_integer_ids(tmp_path):
    path = tmp_path / "typed.parquet"
    pd.DataFrame({
        "when": pd.to_datetime(["2025-11-25 08:00:00", "2025-11-25 07:59:00"]),
        "vid": [101, 102], "sid": [1, 2], "page": ["Home", "FAQ"], "secs": [0, 15],
    }).to_parquet(path)
    frame, report = load_events(path, columns={"ts": "when", "visitor_id": "vid", "session_id": "sid",
                                                "seconds_on_page": "secs"})
    assert frame["visitor_id"].tolist() == ["102", "101"] and frame["ts"].tolist() == [1764057540.0, 1764057600.0]
    assert _problems(report) == [(2, "ts", "unsorted", "sorted")]


def test_missing_columns_are_the_one_fatal_case(tmp_path):
    path = tmp_path / "events.csv"
    _write(path, "Time,Visitor,page\n1764057600,v1,Home\n")
    with pytest.raises(MissingColumns) as info:
        load_events(path, columns={"ts": "Time", "visitor_id": "Visitor", "session_id": "SessionID"})
    err = info.value
    assert isinstance(err, HistoryError) and isinstance(err, PcrulesError) and isinstance(err, ValueError)
    assert err.missing == {"session_id": "SessionID", "seconds_on_page": "seconds_on_page"}
    assert "missing required column(s): session_id (looked for 'SessionID'), seconds_on_page" in str(err)
    assert "'Time', 'Visitor', 'page'" in str(err)
    assert err.available == ["Time", "Visitor", "page"] and err.table == "events" and err.source == str(path)
    assert "columns=" not in str(err) and "Map them" not in str(err)  # neutral: each caller adds its remedy
    # A missing optional column is only noted.
    _write(path, "ts,visitor_id,session_id,page,seconds_on_page\n1764057600,v1,s1,Home,0\n")
    frame, report = load_events(path)
    assert report.ok and len(frame) == 1 and "device" in report.absent
    assert list(frame.columns) == ["ts", "visitor_id", "session_id", "page", "seconds_on_page"]


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(HistoryError, match="cannot read"):
        load_events(tmp_path / "nope.csv")
    (tmp_path / "fake.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(HistoryError, match="cannot read"):
        load_events(tmp_path / "fake.csv.gz")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(HistoryError, match="cannot read"):
        load_events(tmp_path / "fake.parquet")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(HistoryError, match="empty file"):
        load_events(tmp_path / "empty.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(HistoryError, match="format"):
        load_events(tmp_path / "data.xlsx")
    with pytest.raises(ValueError, match="unknown name"):
        load_events(tmp_path / "empty.csv", columns={"visitor": "v"})
    (tmp_path / "header.csv").write_text("ts,visitor_id,session_id,page,seconds_on_page\n")
    frame, report = load_events(tmp_path / "header.csv")
    assert len(frame) == 0 and report.rows_read == 0 and report.ok


def test_offers_and_page_views(tmp_path):
    offers = tmp_path / "offers.csv"
    _write(offers, "ts,visitor_id,session_id,page,seconds_on_page,response,response_delay_s\n"
                   "1764057600,v1,s1,Checkout,60,accepted,5\n"
                   "1764057700,v2,s2,Checkout,60,expired,\n"
                   "1764057800,v3,s3,FAQ,15,,\n"            # row 3: missing answer
                   "1764057900,v4,s4,FAQ,15,maybe,\n"       # row 4: unknown answer
                   "1764057650,v5,s5,FAQ,-15,none,\n")      # row 5: negative optional duration; out of order
    frame, report = load_offers(offers)
    assert _problems(report) == [(3, "response", "missing_value", "dropped"),
                                 (4, "response", "unknown_value", "dropped"),
                                 (5, "seconds_on_page", "negative", "coerced"), (5, "ts", "unsorted", "sorted")]
    assert frame["response"].tolist() == ["accept", "none", "none"]
    assert frame["visitor_id"].tolist() == ["v1", "v5", "v2"]

    views = tmp_path / "page_views.csv"
    _write(views, "visitor_id,session_id,page,enter_ts,dwell_s,needs_help\n"
                  "v1,s1,Home,1764057600,12.5,false\n"
                  "v1,s1,Bill Payment,1764057615,-3,true\n"   # row 2: negative dwell
                  "v2,s2,FAQ,1764057500,40,sometimes\n")      # row 3: bad flag; out of order
    frame, report = load_page_views(views)
    assert _problems(report) == [(2, "dwell_s", "negative", "dropped"), (3, "enter_ts", "unsorted", "sorted"),
                                 (3, "needs_help", "wrong_type", "coerced")]
    assert frame["visitor_id"].tolist() == ["v2", "v1"]


@pytest.mark.parametrize("fmt", ["parquet", "csv.gz"])
def test_a_written_world_loads_back_clean_and_valid(worlds, tmp_path, fmt):
    world = worlds(visitors=150, seed=9)
    paths = world.write(tmp_path, format=fmt)
    events, report = load_events(paths["events"])
    assert report.ok and report.problems == [] and len(events) == len(world.events)
    assert np.array_equal(events["ts"], world.events["ts"])
    assert events["response"].fillna("").tolist() == world.events["response"].fillna("").tolist()
    offers, report = load_offers(paths["offers"])
    assert report.ok and offers["response"].tolist() == world.offers["response"].tolist()
    views, report = load_page_views(paths["page_views"])
    assert report.ok and views["needs_help"].tolist() == world.page_views["needs_help"].tolist()
    for row in events.head(200).drop(columns=["response", "response_delay_s"]).to_dict("records"):
        validate_event({k: (None if v is pd.NA else v) for k, v in row.items()}, clock=lambda: 0.0)


def test_the_format_error_is_neutral_and_carries_what_a_caller_needs(tmp_path):
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(UnknownFormat) as info:
        load_events(tmp_path / "data.xlsx")
    err = info.value
    assert isinstance(err, HistoryError) and err.path == str(tmp_path / "data.xlsx") and err.given is None
    assert "the format (csv or parquet)" in str(err) and "format=" not in str(err)
    assert ".parquet" in err.suffixes["parquet"] and ".csv.gz" in err.suffixes["csv"]
    with pytest.raises(UnknownFormat, match="the format must be csv or parquet, got 'xls'"):
        load_events(tmp_path / "data.xlsx", format="xls")


def test_a_binary_file_is_refused_in_one_line_not_read_as_garbage_rows(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(HistoryError, match="cannot read as a CSV file") as info:
        load_events(path)
    assert "\n" not in str(info.value)
    path.write_bytes(b"\xff\xfet\x00s\x00")  # UTF-16
    with pytest.raises(HistoryError, match="not text|not UTF-8"):
        load_events(path)
    path.write_bytes(b"ts,visitor_id,session_id,page,seconds_on_page\n1764057600,v\xff,s1,Home,3\n")
    frame, report = load_events(path)  # a bad byte in a data row spoils that row only
    assert len(frame) == 1


def test_check_columns_reads_only_the_header_and_raises_as_a_load_would(tmp_path):
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as out:
        out.write("ts,visitor_id,session_id,page,seconds_on_page,extra\n1764057600,v1,s1,Home,0,x\n")
    assert check_columns(path, "events") == ["ts", "visitor_id", "session_id", "page", "seconds_on_page", "extra"]
    pd.DataFrame({"ts": [1.0], "visitor_id": ["v"]}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(MissingColumns) as info:
        check_columns(tmp_path / "e.parquet", "events")
    assert set(info.value.missing) == {"session_id", "page", "seconds_on_page"}
    assert check_columns(tmp_path / "e.parquet", "events", {"session_id": "visitor_id", "page": "ts",
                                                            "seconds_on_page": "ts"})
    (tmp_path / "text.parquet").write_text("ts\n1\n")
    with pytest.raises(HistoryError, match="cannot read as a Parquet file"):
        check_columns(tmp_path / "text.parquet", "events")
    with pytest.raises(HistoryError, match="no such file"):
        check_columns(tmp_path / "nope.csv", "events")
    with pytest.raises(UnknownFormat):
        check_columns(tmp_path / "events.json", "events")
