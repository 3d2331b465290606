"""History beyond one machine's memory: the backtest and the off-policy estimates over a history partitioned by
visitor, partition by partition, on one machine's cores or on a Dask cluster.

Why it is exact. Every policy pcrules applies is per visitor: sessions, offers per session, pending offers,
decline and no-answer cooldowns, the holdout (a keyed hash of the visitor) and exploration (a keyed hash of the
session) never look at another visitor; queue status is an external timeline that every partition is given
whole. So a history split by a stable hash of the visitor id can be judged one partition at a time, and its
figures combined: counts add up exactly, sums to float rounding (their order of addition changes), the figures
derived from them (rates, per-hour load against capacity, ITT uplift) are computed once from the combined
counts and sums, as the in-memory backtest computes them. The bootstrap intervals of the off-policy estimates
resample visitors, so per-visitor sums are all they need (see :func:`offpolicy_partitioned`).

Layout. ``<root>/part=NNN/*.parquet`` (hive style, ``NNN`` = :func:`visitor_partition`, a keyed BLAKE2b hash
of the visitor id modulo the number of partitions); a world written with ``World.write(dir, parts=N)`` (or
``pcrules sample-data --partitions N``) has ``events/``, ``offers/`` and ``page_views/`` laid out so, and
:func:`write_partitioned` / :func:`repartition` lay out any frame, log export or folder of files the same way.
A folder of files that is not partitioned by visitor is read as one partition (it must fit in memory);
:func:`repartition` streams it into partitions first.

Reading: pyarrow.dataset, not DuckDB. pyarrow is already a dependency of the analysis extra (pandas reads
Parquet through it), so nothing is added; a dataset opened on one partition's files reads only the columns the
ruleset, the model's contract fields, the answers and the truth need (projection) and skips row groups outside
a ``since``/``until`` time window from their statistics (predicate push-down); it hands Arrow tables to pandas
without a copy of the numbers and discovers hive partitions by itself. Reading file by file keeps each file's
name for the report of bad rows. DuckDB would bring a second engine (and its own dependency) to do the same
scan and then convert to pandas anyway: its strength, SQL over the whole history, is not what the partition
function needs, which is one partition's rows as numpy arrays for the array judge.

Engines. ``backtest_partitioned(..., engine="processes")`` (the default, ``workers`` processes: both cores of
a 2-core machine), ``"serial"`` (this process, one partition at a time: the least memory), ``"dask"`` or
``client=`` (a ``dask.distributed`` client: the partitions are mapped on its workers and the partial figures
reduced here). Peak memory is that of the partitions in flight, not of the history. The partials are
reduced in partition order, so every engine gives the same result to the last bit.

The partition function, :func:`backtest_partition`, takes one partition's events as a DataFrame and returns its
:class:`BacktestPartial`; :func:`reduce_backtest` combines them. ``docs/partitioned.md`` shows it under Spark's
``applyInPandas``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.events import CONTRACT
from ..core.spec import RuleSpec, load_spec
from .table import ANSWER_COLUMNS

__all__ = ["PARTITION_KEY", "visitor_partition", "write_partitioned", "repartition", "compact", "Partition",
           "partitions", "read_partition", "BacktestPartial", "backtest_partition", "reduce_backtest",
           "backtest_partitioned", "OffPolicyPartial", "offpolicy_partition", "reduce_offpolicy",
           "offpolicy_partitioned", "PartitionedOffPolicy", "PartitionProblem", "Piece", "pieces", "split_frame",
           "run_partitions", "learning_curve", "LearningCurve", "train_on_sample", "offers_sample",
           "stratified_visitors", "visitor_hash", "sample_backtest", "SampleEstimate", "recheck", "SCALED"]

PARTITION_KEY = b"pcrules-partition-v1"  # the hash key of the visitor partition: stable everywhere
PART_DIR = re.compile(r"^part=(\d+)$")
ROW_GROUP = 131_072  # rows per Parquet row group: a time window skips the groups outside it
_NUMBER_COLUMNS = ("ts", "seconds_on_page", "pages_viewed", "session_seconds", "response_delay_s")


# ============================================================================================ writing


def visitor_partition(visitor_ids: Any, parts: int) -> np.ndarray:
    """The partition (0 .. parts-1) of each visitor id: a keyed BLAKE2b hash of the id, modulo `parts`. Each
    distinct id is hashed once; a missing id goes to partition 0."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    codes, uniques = pd.factorize(pd.Series(visitor_ids, copy=False).astype(object), use_na_sentinel=True)
    of_unique = np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(u).encode(), digest_size=8, key=PARTITION_KEY).digest(), "big") % parts
         for u in uniques), dtype=np.int64, count=len(uniques))
    out = np.zeros(len(codes), dtype=np.int64)
    known = codes >= 0
    out[known] = of_unique[codes[known]]
    return out


def _part_name(part: int) -> str:
    return f"part={part:03d}"


def write_partitioned(frame: pd.DataFrame, root: str | os.PathLike[str], parts: int, *,
                      file_name: str = "part-00000.parquet", by: str = "visitor_id") -> dict[int, Path]:
    """Write `frame` under `root` as ``part=NNN/<file_name>`` (zstd Parquet), its rows split by
    :func:`visitor_partition` of column `by`, each partition's rows in the frame's order. Each file is written
    under a temporary name and renamed. Several calls with different `file_name` add files to the partitions
    (a history written chunk by chunk). Returns partition -> path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    part = visitor_partition(frame[by], parts)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    paths = {}
    for p in range(parts):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if lo == hi:
            continue
        folder = root / _part_name(p)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / file_name
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.take(pa.array(order[lo:hi])), tmp, compression="zstd", row_group_size=ROW_GROUP)
        os.replace(tmp, path)
        paths[p] = path
    return paths


def repartition(source: str | os.PathLike[str], root: str | os.PathLike[str], parts: int, *,
                batch_rows: int = 1_000_000, by: str = "visitor_id", progress: bool = False) -> int:
    """Stream a Parquet file or folder (any layout, e.g. a decision log export) into ``root/part=NNN/``, by
    visitor, `batch_rows` rows at a time (bounded memory). Returns the rows written."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(source), format="parquet", partitioning="hive")
    written = 0
    bar = _bar(progress, dataset.count_rows(), "repartition", "row")
    for k, batch in enumerate(dataset.to_batches(batch_size=batch_rows)):
        frame = batch.to_pandas()
        write_partitioned(frame, root, parts, file_name=f"batch-{k:05d}.parquet", by=by)
        written += len(frame)
        if bar is not None:
            bar.update(len(frame))
    if bar is not None:
        bar.close()
    return written


def compact(root: str | os.PathLike[str], *, workers: int | None = None, progress: bool = False) -> int:
    """Rewrite each partition under `root` as one file in time order (``part-00000.parquet``), replacing the
    files it had (e.g. one per chunk of a generated world, whose rows interleave in time): a partition read
    in time order needs no sort. Returns the partitions rewritten."""
    work = [p for p in partitions(root) if PART_DIR.match(p.name)]
    run_partitions(_compact_one, work, engine="processes", workers=workers, progress=progress, desc="compact")
    return len(work)


def _compact_one(part: Partition) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame, _, problems = read_partition(part, None, required=())
    if problems:
        raise ValueError(f"{part.name}: cannot compact: " + "; ".join(map(str, problems[:3])))
    folder = Path(part.files[0]).parent
    target = folder / "part-00000.parquet"
    tmp = folder / "part-00000.parquet.tmp"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp, compression="zstd",
                   row_group_size=ROW_GROUP)
    for old in part.files:
        os.remove(old)
    os.replace(tmp, target)


def _bar(progress: bool, total: int, desc: str, unit: str) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=0.5, smoothing=0.1)


# ============================================================================================ reading


@dataclass(frozen=True)
class Partition:
    """One partition of a history: its name (``part=007``, or the folder/file for an unpartitioned source) and
    its Parquet files."""

    name: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class PartitionProblem:
    """A problem found while reading a partition: by file and row (1-based within the file; None: the file)."""

    partition: str
    file: str
    row: int | None
    column: str | None
    detail: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.column + ': ' if self.column else ''}{self.detail}"


def partitions(source: str | os.PathLike[str]) -> list[Partition]:
    """The partitions of `source`: each ``part=NNN`` folder under it (sorted), else the source as one partition
    (a file, or a folder of Parquet files, which then must fit in memory)."""
    root = Path(source)
    if root.is_file():
        return [Partition(root.name, (str(root),))]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    parts = sorted((d for d in root.iterdir() if d.is_dir() and PART_DIR.match(d.name)),
                   key=lambda d: int(PART_DIR.match(d.name)[1]))  # type: ignore[index]
    if parts:
        return [Partition(d.name, tuple(sorted(str(f) for f in d.rglob("*.parquet")))) for d in parts]
    files = tuple(sorted(str(f) for f in root.rglob("*.parquet")))
    if not files:
        raise FileNotFoundError(f"{root}: no Parquet files and no part=NNN folders")
    return [Partition(root.name, files)]


def spec_columns(spec: RuleSpec, extra: Iterable[str] = ()) -> list[str]:
    """The columns a backtest of `spec` reads: the event contract's fields, the fields the rules name, the
    recorded answers and `extra` (truth, effects)."""
    out = list(CONTRACT) + [f for f in spec.field_types if f not in CONTRACT] + list(ANSWER_COLUMNS)
    return list(dict.fromkeys([*out, *extra]))


def read_partition(part: Partition, columns: Sequence[str] | None = None, *, since: float | None = None,
                   until: float | None = None, required: Sequence[str] = ("ts", "visitor_id", "session_id")
                   ) -> tuple[pd.DataFrame, pd.DataFrame, list[PartitionProblem]]:
    """(rows, origin, problems) of one partition, file by file, through ``pyarrow.dataset``: only `columns`
    (those present; None: all), only rows with ``since <= ts < until`` (row groups outside are skipped), in
    time order (a stable sort by ``ts``, done in Arrow when the files' rows are not in time order already).

    ``origin`` has one row per row returned: ``file`` (index into ``part.files``) and ``row`` (1-based within
    the file; with a time window, within the rows the window kept). A file that cannot be read or lacks a
    column of `required` is skipped and reported; a number column holding something else is set to missing
    there (the backtest then refuses a required one, by file and row) and each such row is reported. Never
    raises for bad data."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    tables, files, problems = [], [], []
    window = None
    if since is not None:
        window = ds.field("ts") >= since
    if until is not None:
        window = (ds.field("ts") < until) if window is None else window & (ds.field("ts") < until)
    for k, path in enumerate(part.files):
        try:
            dataset = ds.dataset(path, format="parquet")
            names = dataset.schema.names
            missing = [c for c in required if c not in names]
            if missing:
                problems.append(PartitionProblem(part.name, path, None, None,
                                                 f"missing column(s) {', '.join(missing)}: file skipped"))
                continue
            wanted = names if columns is None else [c for c in columns if c in names]
            table = dataset.to_table(columns=wanted, filter=window if "ts" in names else None)
        except Exception as exc:  # a corrupt or foreign file: pyarrow's many errors
            problems.append(PartitionProblem(part.name, path, None, None,
                                             f"cannot read ({type(exc).__name__}: {exc}): file skipped"))
            continue
        odd = [c for c in _NUMBER_COLUMNS if c in table.column_names
               and not (pa.types.is_integer(table.schema.field(c).type)
                        or pa.types.is_floating(table.schema.field(c).type))]
        if odd:  # the slow path, for a file with text (or worse) in a number column
            frame = table.to_pandas()
            for column in odd:
                raw = frame[column]
                coerced = pd.to_numeric(raw.astype(object), errors="coerce")
                bad = np.flatnonzero(coerced.isna().to_numpy() & raw.notna().to_numpy())
                for i in bad[:1000].tolist():
                    problems.append(PartitionProblem(part.name, path, i + 1, column,
                                                     f"expected a number, got {str(raw.iloc[i])[:40]!r}: set to "
                                                     f"missing"))
                if len(bad) > 1000:
                    problems.append(PartitionProblem(part.name, path, None, column,
                                                     f"... and {len(bad) - 1000:,} more rows like these"))
                frame[column] = coerced.astype(float)
            table = pa.Table.from_pandas(frame, preserve_index=False)
        tables.append(table)
        files.append(k)
    if not tables:
        return (pd.DataFrame(columns=list(columns or required)), pd.DataFrame({"file": [], "row": []}), problems)
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # files whose column types cannot be unified: pandas does
        table = None
    origin = pd.DataFrame({"file": np.concatenate([np.full(t.num_rows, k, dtype=np.int32)
                                                   for k, t in zip(files, tables)]),
                           "row": np.concatenate([np.arange(1, t.num_rows + 1, dtype=np.int64) for t in tables])})
    if table is None:
        frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        return frame, origin, problems
    if "ts" in table.column_names and table.num_rows > 1:
        ts = table.column("ts").to_numpy(zero_copy_only=False).astype(float, copy=False)
        if not (np.diff(ts) >= 0).all():  # NaN counts as out of order, as in EventTable
            order = np.argsort(np.where(np.isnan(ts), np.inf, ts), kind="stable")
            table = table.take(pa.array(order))
            origin = origin.iloc[order].reset_index(drop=True)
    return table.to_pandas(), origin, problems


# ============================================================================================ the backtest


@dataclass
class BacktestPartial:
    """One partition's figures: what :func:`reduce_backtest` needs to combine partitions exactly.

    ``metrics``: the partition's own metrics (counts and sums; the derived ones are recomputed on reduction);
    ``per_rule``: its figures by rule (counts and sums); ``hours`` (absolute UTC epoch hours) and the
    (queues, hours) matrices ``offers_h``, ``chats_h``, ``accepted_h``; ``itt``: per P(accept) source, the
    expected effect summed over each visitor's first offer or would-be offer; ``ts_range``: first and last
    valid event time (None: none). ``offers`` / ``decisions``: the rows, when kept. ``refusals`` and
    ``problems``: by file and row."""

    name: str
    metrics: dict[str, Any]
    per_rule: pd.DataFrame
    hours: np.ndarray
    offers_h: np.ndarray
    chats_h: np.ndarray
    accepted_h: np.ndarray
    itt: dict[str, float]
    ts_range: tuple[float, float] | None
    offers: pd.DataFrame | None = None
    decisions: pd.DataFrame | None = None
    refusals: dict[Any, str] = field(default_factory=dict)
    problems: list[PartitionProblem] = field(default_factory=list)
    seconds: float = 0.0


def _queue_matrix(frame: pd.DataFrame, queues: Sequence[str], column: str, n_hours: int) -> np.ndarray:
    if not len(frame):
        return np.zeros((len(queues), n_hours))
    return frame[column].to_numpy(dtype=float).reshape(len(queues), n_hours)


def backtest_partition(spec: RuleSpec | Mapping[str, Any] | str, events: pd.DataFrame, scorer: Any = None, *,
                       name: str = "", queue_status: Any = None, truth: str | None = None,
                       effects: Any = None, keep_offers: bool = True, keep_decisions: bool = False,
                       exploration_cost: bool = True, offer_id_prefix: str = "o",
                       origin: pd.DataFrame | None = None, files: Sequence[str] = (),
                       problems: Sequence[PartitionProblem] = ()) -> BacktestPartial:
    """The partition function: the in-memory backtest of `spec` on one partition's `events` (all the events of
    its visitors), as a :class:`BacktestPartial`. Offer ids are ``<prefix><name>-1, 2, ...`` (unique across
    partitions). `origin` (file index, row per event) and `files` name the refused rows by file and row."""
    from .backtest import backtest

    started = time.perf_counter()
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    result = backtest(spec, events, scorer, queue_status=queue_status, truth=truth, effects=effects,
                      offer_id_prefix=f"{offer_id_prefix}{name}-" if name else offer_id_prefix,
                      exploration_cost=exploration_cost)
    table = result.table
    ts = table.ts[table.valid]
    ts_range = (float(np.nanmin(ts)), float(np.nanmax(ts))) if len(ts) else None
    queues = list(spec.queues)
    qh = result.queue_hours if ts_range is not None else result.queue_hours.iloc[0:0]
    if ts_range is not None and len(qh):
        first = int(np.floor(ts_range[0] / 3600.0))
        hours = np.arange(first, int(np.floor(ts_range[1] / 3600.0)) + 1)
    else:
        hours = np.zeros(0, dtype=np.int64)
    n_h = len(hours)
    itt: dict[str, float] = {}
    offers = result.offers
    if len(offers):
        first_offer = ~offers["visitor_id"].astype(object).duplicated().to_numpy()
        for prefix, column in (("expected", "expected_effect"), ("true_expected", "true_effect")):
            if column in offers.columns:
                itt[prefix] = float(offers[column].to_numpy(dtype=float)[first_offer].sum())
    refusals: dict[Any, str] = {}
    if result.refusals:
        for index, why in result.refusals.items():
            if origin is not None and files:
                where = origin.iloc[int(index)]
                refusals[(files[int(where["file"])], int(where["row"]))] = why
            else:
                refusals[(name, index)] = why
    return BacktestPartial(
        name, result.metrics, result.per_rule, hours,
        _queue_matrix(qh, queues, "offers", n_h), _queue_matrix(qh, queues, "expected_chats", n_h),
        _queue_matrix(qh, queues, "accepted", n_h), itt, ts_range,
        offers.reset_index(drop=True) if keep_offers else None,
        result.decisions if keep_decisions else None, refusals, list(problems), time.perf_counter() - started)


_DERIVED = {"offer_rate_per_session", "expected_accept_rate", "recorded_accept_rate", "true_expected_accept_rate",
            "expected_uplift_per_offer", "expected_uplift_itt", "true_expected_uplift_per_offer",
            "true_expected_uplift_itt", "queues"}


def _add(a: Any, b: Any, key: str) -> Any:
    """a + b for a metric: numbers add (None stays None), dicts add by key, text must agree."""
    if isinstance(a, Mapping):
        return {k: _add(a.get(k), b.get(k), k) for k in dict.fromkeys([*a, *b])}
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, bool) or isinstance(a, str):
        if a != b:
            raise ValueError(f"partitions disagree on {key}: {a!r} and {b!r}")
        return a
    return a + b


def reduce_backtest(spec: RuleSpec | Mapping[str, Any] | str, partials: Sequence[BacktestPartial], *,
                    seconds: float | None = None, engine: str = "partitioned") -> Any:
    """Combine the partitions' figures into one :class:`~pcrules.analysis.backtest.BacktestResult`, equal to
    the in-memory backtest of the whole history: counts exactly, sums to float rounding; rates, the load per
    queue and hour, and the ITT uplift recomputed from the combined counts and sums. ``decisions`` and
    ``offers`` are the partitions' rows one after the other (when kept; ``offers`` sorted by time),
    ``refusals`` by (file, row)."""
    from .backtest import BacktestResult
    from .figures import open_hours, queue_figures, queue_hours_frame, queue_load_frame

    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    partials = list(partials)
    if not partials:
        raise ValueError("no partition to reduce: the history is empty")
    metrics: dict[str, Any] = {}
    for p in partials:
        for key, value in p.metrics.items():
            if key in _DERIVED:
                continue
            metrics[key] = _add(metrics[key], value, key) if key in metrics else value
    per_rule = partials[0].per_rule.copy()
    for p in partials[1:]:
        per_rule = per_rule + p.per_rule
    # hours: the whole history's first to last valid event, as the in-memory backtest's buckets
    ranges = [p.ts_range for p in partials if p.ts_range is not None]
    if ranges:
        first = int(np.floor(min(r[0] for r in ranges) / 3600.0))
        hours = np.arange(first, int(np.floor(max(r[1] for r in ranges) / 3600.0)) + 1)
    else:
        hours = np.arange(0, 1)
    queues = list(spec.queues)
    shape = (len(queues), len(hours))
    offers_h, chats_h, accepted_h = np.zeros(shape, dtype=np.int64), np.zeros(shape), np.zeros(shape, np.int64)
    for p in partials:
        if not len(p.hours):
            continue
        at = slice(int(p.hours[0]) - int(hours[0]), int(p.hours[-1]) - int(hours[0]) + 1)
        offers_h[:, at] += p.offers_h.astype(np.int64)
        chats_h[:, at] += p.chats_h
        accepted_h[:, at] += p.accepted_h.astype(np.int64)
    has_expected = metrics.get("expected_accepts") is not None
    if not has_expected:
        chats_h[:] = np.nan
    open_h = open_hours(spec, hours)
    offers = int(metrics.get("offers", 0))
    metrics["offer_rate_per_session"] = offers / max(int(metrics.get("sessions", 0)), 1)
    if "expected_accepts" in metrics:
        ea = metrics["expected_accepts"]
        metrics["expected_accept_rate"] = None if ea is None else ea / max(offers, 1)
    metrics["recorded_accept_rate"] = metrics.get("accepted", 0) / max(offers, 1)
    if metrics.get("true_expected_accepts") is not None:
        metrics["true_expected_accept_rate"] = metrics["true_expected_accepts"] / max(offers, 1)
    eligible = int(metrics.get("eligible_visitors", 0))
    for prefix in ("expected", "true_expected"):
        total = metrics.get(f"{prefix}_uplift")
        if total is None:
            metrics[f"{prefix}_uplift_per_offer"] = metrics[f"{prefix}_uplift_itt"] = None
            continue
        metrics[f"{prefix}_uplift_per_offer"] = total / offers if offers else None
        itt = sum(p.itt.get(prefix, 0.0) for p in partials)
        metrics[f"{prefix}_uplift_itt"] = itt / eligible if eligible else None
    capacities = {q: spec.queues[q].capacity_per_hour for q in queues}
    metrics["queues"] = queue_figures(queues, capacities, offers_h, chats_h, accepted_h, open_h, has_expected)
    queue_hours = queue_hours_frame(queues, hours, open_h, offers_h, chats_h, accepted_h)
    queue_load = queue_load_frame(metrics["queues"])
    metrics["queues"] = {name: dict(row) for name, row in queue_load.iterrows()} if len(queue_load) else {}
    # the in-memory backtest's key order
    order = list(partials[0].metrics)
    metrics = {k: metrics[k] for k in order if k in metrics} | {k: v for k, v in metrics.items() if k not in order}
    kept = [p.offers for p in partials if p.offers is not None]
    if kept:
        offer_frame = pd.concat(kept, ignore_index=True)
        offer_frame = offer_frame.iloc[np.argsort(offer_frame["ts"].to_numpy(), kind="stable")]
        offer_frame = offer_frame.reset_index(drop=True)
        for column in ("rule", "queue", "outcome"):  # one category list for all (empty partitions included)
            if column in offer_frame.columns and not isinstance(offer_frame[column].dtype, pd.CategoricalDtype):
                offer_frame[column] = pd.Categorical(offer_frame[column],
                                                     categories=kept[0][column].cat.categories)
    else:
        offer_frame = pd.DataFrame()
    decisions = [p.decisions for p in partials if p.decisions is not None]
    refusals: dict[Any, str] = {}
    for p in partials:
        refusals.update(p.refusals)
    result = BacktestResult(spec, pd.concat(decisions) if decisions else pd.DataFrame(), offer_frame, metrics,
                            per_rule, queue_hours, queue_load, refusals,
                            sum(p.seconds for p in partials) if seconds is None else seconds, engine)
    result.problems = [q for p in partials for q in p.problems]  # type: ignore[attr-defined]
    return result


@dataclass(frozen=True)
class Piece:
    """One partition's work: its name and, per table, a :class:`Partition` to read or the rows themselves."""

    name: str
    tables: Mapping[str, Partition | pd.DataFrame | None]


def split_frame(frame: pd.DataFrame, parts: int) -> dict[str, pd.DataFrame]:
    """`frame` split by :func:`visitor_partition` into ``{"part=NNN": rows}`` (every partition, empty ones too)."""
    part = visitor_partition(frame["visitor_id"], parts)
    return {_part_name(p): frame.iloc[np.flatnonzero(part == p)] for p in range(parts)}


def pieces(sources: Mapping[str, str | os.PathLike[str] | pd.DataFrame | None], parts: int | None = None,
           ) -> list[Piece]:
    """The partitions of several tables of one history (events, offers, goals), matched by name: all folders
    partitioned the same way (a table missing a partition has no rows there), or all DataFrames (split into
    `parts` by visitor; default 8)."""
    given = {k: v for k, v in sources.items() if v is not None}
    frames = {k: isinstance(v, pd.DataFrame) for k, v in given.items()}
    if any(frames.values()) and not all(frames.values()):
        raise ValueError("the tables of a partitioned history are either all folders or all DataFrames")
    by_table: dict[str, dict[str, Any]] = {}
    for table, source in given.items():
        if isinstance(source, pd.DataFrame):
            by_table[table] = dict(split_frame(source, parts or 8))
        else:
            by_table[table] = {p.name: p for p in partitions(source)}
    first = next(iter(given))
    names = list(by_table[first])
    if any(len(by_table[t]) == 1 and len(names) > 1 and not PART_DIR.match(next(iter(by_table[t])))
           for t in by_table):
        raise ValueError("every table must be partitioned by visitor (part=NNN folders) when the events are")
    names += sorted({n for t in by_table.values() for n in t} - set(names))
    return [Piece(name, {t: by_table[t].get(name) for t in given}) for name in names]


def _load(piece: Piece, table: str, columns: Sequence[str] | None, options: Mapping[str, Any],
          required: Sequence[str]) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[PartitionProblem],
                                            tuple[str, ...]]:
    """(rows, origin, problems, files) of one table of a piece: None rows when the piece has none."""
    source = piece.tables.get(table)
    if source is None:
        return None, None, [], ()
    if isinstance(source, pd.DataFrame):
        return source, None, [], ()
    frame, origin, problems = read_partition(source, columns, since=options.get("since"),
                                             until=options.get("until"), required=required)
    return frame, origin, problems, source.files


def _read_and_judge(piece: Piece, spec_source: Mapping[str, Any], scorer: Any, options: Mapping[str, Any],
                    ) -> BacktestPartial:
    """Worker side: read one partition and judge it (a top-level function: picklable for processes and Dask)."""
    spec = load_spec(spec_source)
    extra = [c for c in (options.get("truth"), *(options.get("effect_columns") or ())) if c]
    columns = options.get("columns") or spec_columns(spec, extra)
    frame, origin, problems, files = _load(piece, "events", columns, options, ("ts", "visitor_id", "session_id"))
    if frame is None:
        frame = _empty_events(columns)
    if not len(frame) or any(c not in frame.columns for c in ("ts", "visitor_id", "session_id", "page",
                                                               "seconds_on_page")):
        missing = [c for c in ("page", "seconds_on_page") if c not in frame.columns]
        if len(frame) and missing:
            problems.append(PartitionProblem(piece.name, ", ".join(files), None, None,
                                             f"missing column(s) {', '.join(missing)}: partition skipped"))
        frame = _empty_events(columns)
        origin = None
    return backtest_partition(spec, frame, scorer, name=piece.name.replace("part=", ""),
                              queue_status=options.get("queue_status"), truth=options.get("truth"),
                              effects=options.get("effects"), keep_offers=options.get("keep_offers", True),
                              keep_decisions=options.get("keep_decisions", False),
                              exploration_cost=options.get("exploration_cost", True), origin=origin,
                              files=files, problems=problems)


def _empty_events(columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    for c in _NUMBER_COLUMNS:
        if c in frame.columns:
            frame[c] = frame[c].astype(float)
    return frame


def _effect_columns(effects: Any) -> tuple[str, ...]:
    from .effects import effect_columns

    return effect_columns(effects)


def backtest_partitioned(spec: RuleSpec | Mapping[str, Any] | str, source: str | os.PathLike[str] | pd.DataFrame,
                         scorer: Any = None, *, engine: str = "processes", client: Any = None,
                         workers: int | None = None, parts: int | None = None, queue_status: Any = None,
                         truth: str | None = None,
                         effects: Any = None, keep_offers: bool = True, keep_decisions: bool = False,
                         exploration_cost: bool = True, columns: Sequence[str] | None = None,
                         since: float | None = None, until: float | None = None, progress: bool = False,
                         ) -> Any:
    """The backtest of `spec` over the partitioned history at `source` (see the module docstring): each
    partition read (projected, time-windowed) and judged by :func:`backtest_partition`, the partials combined
    by :func:`reduce_backtest`. ``engine``: ``"processes"`` (``workers`` processes, default: the cores),
    ``"serial"`` or ``"dask"`` (with ``client``, a ``dask.distributed.Client``; without one a LocalCluster of
    ``workers`` processes is started and closed). `truth`: a column name; `effects`: effect column names (or a
    picklable function of the events). ``keep_offers`` / ``keep_decisions``: keep those rows (decisions of a
    history that does not fit in memory do not fit either). The result's ``problems`` lists the bad files and
    rows; its ``refusals`` are keyed by (file, row). `source` may also be a DataFrame (split into `parts`
    partitions by visitor: to spread an in-memory history over a cluster)."""
    started = time.perf_counter()
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    if client is not None:
        engine = "dask"
    if engine not in ("processes", "serial", "dask"):
        raise ValueError(f"engine must be 'processes', 'serial' or 'dask' for a partitioned history, got {engine!r}")
    if truth is not None and not isinstance(truth, str):
        raise ValueError("truth: a partitioned history takes the truth as a column name")
    work = pieces({"events": source}, parts)
    options = {"queue_status": queue_status, "truth": truth, "effects": effects,
               "effect_columns": _effect_columns(effects), "keep_offers": keep_offers,
               "keep_decisions": keep_decisions, "exploration_cost": exploration_cost, "columns": columns,
               "since": since, "until": until}
    spec_source = dict(spec.source)
    partials = run_partitions(_read_and_judge, work, spec_source, scorer, options, engine=engine, client=client,
                              workers=workers, progress=progress, desc=f"backtest {spec.name}")
    return reduce_backtest(spec, partials, seconds=time.perf_counter() - started, engine=f"fast, {engine}")


def run_partitions(function: Callable[..., Any], parts: Sequence[Any], *args: Any, engine: str = "processes",
                   client: Any = None, workers: int | None = None, progress: bool = False,
                   desc: str = "partitions") -> list[Any]:
    """``function(part, *args)`` for every partition, on the engine; the results in partition order.

    ``"processes"`` forks its workers where the platform can (Linux: no ``__main__`` guard needed, nothing
    re-imported), before any other thread of this module starts, and spawns them elsewhere."""
    out: list[Any] = [None] * len(parts)
    bar = None
    try:
        if engine == "serial" or (engine == "processes" and (workers == 1 or len(parts) == 1)):
            bar = _bar(progress, len(parts), desc, "partition")
            for i, part in enumerate(parts):
                out[i] = function(part, *args)
                if bar is not None:
                    bar.update()
        elif engine == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            n = workers or os.cpu_count() or 1
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(max_workers=min(n, len(parts)),
                                     mp_context=multiprocessing.get_context(method)) as pool:
                futures = {pool.submit(function, part, *args): i for i, part in enumerate(parts)}
                bar = _bar(progress, len(parts), desc, "partition")  # its monitor thread: after the forks
                for future in as_completed(futures):
                    out[futures[future]] = future.result()
                    if bar is not None:
                        bar.update()
        else:
            bar = _bar(progress, len(parts), desc, "partition")
            out = _run_dask(function, parts, args, client, workers, bar)
    finally:
        if bar is not None:
            bar.close()
    return out


def _run_dask(function: Callable[..., Any], parts: Sequence[Partition], args: tuple[Any, ...], client: Any,
              workers: int | None, bar: Any) -> list[Any]:
    from dask.distributed import Client, LocalCluster, as_completed

    own = None
    if client is None:
        own = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, dashboard_address=None)
        client = Client(own)
    try:
        # each argument once to every worker (in a list: a scattered dict would be scattered item by item)
        shared = [client.scatter([a], broadcast=True)[0] if a is not None and not isinstance(a, (str, int, float))
                  else a for a in args]
        futures = client.map(function, list(parts), *[[a] * len(parts) for a in shared], pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        out: list[Any] = [None] * len(parts)
        for future, value in as_completed(futures, with_results=True):
            out[index[future.key]] = value
            if bar is not None:
                bar.update()
        return out
    finally:
        if own is not None:
            client.close()
            own.close()


# ============================================================================================ off-policy


@dataclass
class OffPolicyPartial:
    """One partition's share of an off-policy report (one candidate, one reward): :func:`offpolicy.unit_sums`
    (additive), the per-visitor sums of the unit columns with each visitor's id and the time of its first
    unit's session (the order of the clusters in the whole history) and a digest of the logged side."""

    sums: dict[str, Any]
    per_cluster: np.ndarray
    visitor: np.ndarray  # visitor id per cluster row
    first_ts: np.ndarray  # per cluster row: when the session of its first unit started
    units: int  # the partition's stretches (the report's total_units is their sum x (1 - holdout))
    digest: str


@dataclass
class OffPolicyPartials:
    """A partition's partials: ``accepts`` (the candidate's expected accepted chats, DR with the scorer) and, with
    goals, ``goals`` (the candidate's goals) and ``never`` (never offering's goals), plus bad rows."""

    name: str
    reports: dict[str, OffPolicyPartial]
    problems: list[PartitionProblem] = field(default_factory=list)


def _unit_partial(fb: Any, cluster_first_ts: np.ndarray, visitor_ids: np.ndarray, logged: np.ndarray,
                  propensity: np.ndarray, reward: np.ndarray, chosen: np.ndarray, cand_p: np.ndarray,
                  q_cand: np.ndarray | None = None, q_log: np.ndarray | None = None) -> OffPolicyPartial:
    """:func:`offpolicy.evaluate`'s unit columns for one partition, summed per visitor."""
    from .offpolicy import unit_sums

    match = chosen == logged
    w = np.where(match, 1.0 / np.where(propensity > 0, propensity, 1.0), 0.0)
    r = np.asarray(reward, dtype=float)
    columns = [np.ones(len(w)), w, w * r]
    if q_cand is not None:
        q_log = q_cand if q_log is None else q_log
        columns += [q_cand + w * (r - q_log), q_cand]
    unit = np.column_stack(columns) if len(w) else np.zeros((0, len(columns)))
    codes, _ = pd.factorize(fb.visitor)
    n_clusters = int(codes.max()) + 1 if len(codes) else 0
    per_cluster = np.zeros((n_clusters, unit.shape[1]))
    np.add.at(per_cluster, codes, unit)
    _, first_unit = np.unique(codes, return_index=True)
    digest = hashlib.sha256()
    for part in (logged, propensity, r, codes):
        digest.update(np.ascontiguousarray(part).tobytes())
    return OffPolicyPartial(unit_sums(unit, w, match, chosen, cand_p), per_cluster, visitor_ids[first_unit],
                            cluster_first_ts[first_unit], len(w), digest.hexdigest())


def offpolicy_partition(logging_spec: RuleSpec | Mapping[str, Any] | str,
                        candidate: RuleSpec | Mapping[str, Any] | str, events: pd.DataFrame, offers: pd.DataFrame,
                        scorer: Any = None, *, goals: pd.DataFrame | None = None, logging_scorer: Any = None,
                        queue_status: Any = None, name: str = "") -> OffPolicyPartials:
    """The partition function of the off-policy estimates: :func:`pcrules.analysis.feedback.feedback` on one
    partition's events and logged offers, the candidate judged on it as :func:`~.feedback.estimate` and
    :func:`~.feedback.uplift` do, reduced to per-visitor sums (what the visitor bootstrap needs)."""
    from .feedback import candidate_choices, feedback, model_q
    from .offpolicy import NO_OFFER

    logging_spec = logging_spec if isinstance(logging_spec, RuleSpec) else load_spec(logging_spec)
    candidate = candidate if isinstance(candidate, RuleSpec) else load_spec(candidate)
    fb = feedback(logging_spec, events, offers, queue_status=queue_status, scorer=logging_scorer)
    # per unit: its first row, its visitor's id, and when its session first appeared (the in-memory cluster order)
    table = fb.table
    first_row = np.full(fb.n, -1, dtype=np.int64)
    rows = np.flatnonzero(fb.stretch >= 0)[::-1]
    first_row[fb.stretch[rows]] = rows
    _, skey, _ = table.keys()
    session_first = np.zeros(int(skey.max()) + 1 if len(skey) else 0, dtype=np.int64)
    codes, at = np.unique(skey[skey >= 0], return_index=True)
    session_first[codes] = np.flatnonzero(skey >= 0)[at]
    unit_ts = table.ts[session_first[skey[first_row]]] if fb.n else np.zeros(0)
    visitor_ids = table.frame["visitor_id"].to_numpy(dtype=object)[first_row] if fb.n else np.zeros(0, object)
    choice = candidate_choices(fb, candidate, scorer, queue_status)
    p_choice = np.where(choice >= 0, fb.chance[np.maximum(choice, 0)], fb.p_none)
    q_cand = q_log = None
    if scorer is not None:
        q_cand, q_log = model_q(fb, scorer, candidate, choice), model_q(fb, scorer, candidate, fb.shown)
    reports = {"accepts": _unit_partial(fb, unit_ts, visitor_ids, fb.shown, fb.p_shown, fb.accepted, choice,
                                        p_choice, q_cand, q_log)}
    if goals is not None:
        reward = fb.goals(goals)
        # estimate(fb, candidate, reward=...) judges the candidate without the scorer
        plain = choice if scorer is None else candidate_choices(fb, candidate, None, queue_status)
        p_plain = np.where(plain >= 0, fb.chance[np.maximum(plain, 0)], fb.p_none)
        reports["goals"] = _unit_partial(fb, unit_ts, visitor_ids, fb.shown, fb.p_shown, reward, plain, p_plain)
        never = np.full(fb.n, NO_OFFER, dtype=np.int64)
        reports["never"] = _unit_partial(fb, unit_ts, visitor_ids, fb.shown, fb.p_shown, reward, never, fb.p_none)
    return OffPolicyPartials(name, reports)


def reduce_offpolicy(partials: Sequence[OffPolicyPartial], *, holdout: float, n_boot: int = 500, seed: int = 0,
                     level: float = 0.95) -> Any:
    """One :class:`~pcrules.analysis.offpolicy.OffPolicyReport` from the partitions' partials: the sums added,
    the visitors put in the whole history's order (by when their first unit's session started, then id) for
    the bootstrap. Reports reduced from the same partitions share their resamples (:func:`offpolicy.difference`
    works on them; not between a partitioned and an in-memory report)."""
    from .offpolicy import report_from_sums

    partials = [p for p in partials if p.units]
    if not partials:
        raise ValueError("logged_choice is empty: there is nothing to evaluate")
    sums: dict[str, Any] = {}
    for p in partials:
        for key, value in p.sums.items():
            sums[key] = value if key not in sums else (max(sums[key], value) if key == "w_max" else sums[key] + value)
    order = pd.DataFrame({"ts": np.concatenate([p.first_ts for p in partials]),
                          "visitor": np.concatenate([p.visitor for p in partials]).astype(object)})
    order = order.sort_values(["ts", "visitor"], kind="stable").index.to_numpy()
    per_cluster = np.concatenate([p.per_cluster for p in partials])[order]
    total = float(sum(p.units for p in partials)) * (1.0 - holdout)
    digest = hashlib.sha256()
    for p in partials:
        digest.update(p.digest.encode())
    digest.update(np.array([seed, n_boot, total]).tobytes())
    return report_from_sums(sums, per_cluster, n_boot=n_boot, seed=seed, level=level, total_units=total,
                            resampling=digest.hexdigest())


@dataclass
class PartitionedOffPolicy:
    """The off-policy estimates of a candidate over a partitioned log: ``report`` (expected accepted chats, as
    :func:`pcrules.analysis.feedback.estimate`), ``uplift`` (extra goals over never offering, as
    :func:`~.feedback.uplift`; None without goals) and the bad files and rows."""

    report: Any
    uplift: Any
    problems: list[PartitionProblem]


_OFFER_COLUMNS = ("visitor_id", "session_id", "ts", "seconds_on_page", "response", "response_delay_s")


def _read_and_evaluate(piece: Piece, logging_source: Mapping[str, Any], candidate_source: Mapping[str, Any],
                       scorer: Any, options: Mapping[str, Any]) -> OffPolicyPartials:
    logging_spec, candidate = load_spec(logging_source), load_spec(candidate_source)
    columns = options.get("columns") or [c for c in spec_columns(logging_spec, spec_columns(candidate))
                                         if c not in ANSWER_COLUMNS]
    events, _, problems, _ = _load(piece, "events", columns, options, ("ts", "visitor_id", "session_id"))
    offers, _, more, _ = _load(piece, "offers", _OFFER_COLUMNS, options, _OFFER_COLUMNS)
    problems += more
    goals = None
    if "goals" in piece.tables:
        goals, _, more, _ = _load(piece, "goals", ("visitor_id", "session_id"), {}, ("session_id",))
        problems += more
        goals = goals if goals is not None else pd.DataFrame({"session_id": pd.Series([], dtype=object)})
    if events is None or not len(events):
        return OffPolicyPartials(piece.name, {}, problems)
    if offers is None:
        offers = pd.DataFrame({c: pd.Series([], dtype=float if c in _NUMBER_COLUMNS else object)
                               for c in _OFFER_COLUMNS})
    out = offpolicy_partition(logging_spec, candidate, events, offers, scorer, goals=goals,
                              logging_scorer=options.get("logging_scorer"),
                              queue_status=options.get("queue_status"), name=piece.name)
    out.problems = problems
    return out


def offpolicy_partitioned(logging_spec: RuleSpec | Mapping[str, Any] | str,
                          candidate: RuleSpec | Mapping[str, Any] | str,
                          events: str | os.PathLike[str] | pd.DataFrame, offers: str | os.PathLike[str] | pd.DataFrame,
                          scorer: Any = None, *, goals: str | os.PathLike[str] | pd.DataFrame | None = None,
                          logging_scorer: Any = None, queue_status: Any = None, n_boot: int = 500, seed: int = 0,
                          level: float = 0.95, engine: str = "processes", client: Any = None,
                          workers: int | None = None, parts: int | None = None,
                          progress: bool = False) -> PartitionedOffPolicy:
    """The candidate's expected accepted chats (and, with `goals`, its extra goals over never offering) estimated
    from a log partitioned by visitor: events, the logged offers and the goals (``visitor_id``, ``session_id``)
    each a folder of ``part=NNN`` partitions laid out alike (or DataFrames, split into `parts`). Equal to
    :func:`pcrules.analysis.feedback.estimate` and :func:`~.feedback.uplift` on the whole log (the sums to float
    rounding, the intervals too when visitors' first sessions do not start at the same instant)."""
    from .offpolicy import difference

    logging_spec = logging_spec if isinstance(logging_spec, RuleSpec) else load_spec(logging_spec)
    candidate = candidate if isinstance(candidate, RuleSpec) else load_spec(candidate)
    work = pieces({"events": events, "offers": offers, "goals": goals}, parts)
    options = {"queue_status": queue_status, "logging_scorer": logging_scorer}
    partials = run_partitions(_read_and_evaluate, work, dict(logging_spec.source), dict(candidate.source), scorer,
                              options, engine="dask" if client is not None else engine, client=client,
                              workers=workers, progress=progress, desc=f"off-policy {candidate.name}")
    h = candidate.policy.holdout

    def report(kind: str) -> Any:
        return reduce_offpolicy([p.reports[kind] for p in partials if kind in p.reports], holdout=h,
                                n_boot=n_boot, seed=seed, level=level)

    uplift = difference(report("goals"), report("never")) if goals is not None else None
    return PartitionedOffPolicy(report("accepts"), uplift, [q for p in partials for q in p.problems])


# ============================================================================================ training on a sample


def visitor_hash(visitor_ids: Any, key: bytes = b"pcrules-sample-v1") -> np.ndarray:
    """A keyed hash of each visitor id as a number in [0, 1): independent of the partition's (another key)."""
    codes, uniques = pd.factorize(pd.Series(visitor_ids, copy=False).astype(object))
    of_unique = np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(u).encode(), digest_size=8, key=key).digest(), "big") / 2**64
         for u in uniques), dtype=float, count=len(uniques))
    return np.where(codes >= 0, of_unique[np.maximum(codes, 0)], 1.0)


def stratified_visitors(visitor: np.ndarray, stratum: np.ndarray, share: float, u: np.ndarray) -> np.ndarray:
    """Per row: its visitor is in a sample of `share` of the visitors of each stratum (proportional allocation:
    round(share x visitors) of each stratum, those with the smallest keyed hash `u`)."""
    frame = pd.DataFrame({"visitor": visitor, "stratum": stratum, "u": u}).drop_duplicates("visitor")
    frame["rank"] = frame.groupby("stratum")["u"].rank(method="first")
    frame["size"] = frame.groupby("stratum")["u"].transform("size")
    chosen = set(frame.loc[frame["rank"] <= np.round(share * frame["size"]), "visitor"])
    return pd.Series(visitor).isin(chosen).to_numpy()


@dataclass
class LearningCurve:
    """AUC and calibration on held-out visitors of models trained on growing stratified visitor samples, each
    with a visitor-bootstrap interval, and the AUC lost against the largest sample (``auc_loss``, paired on the
    same resamples, with its interval); ``chosen``: the smallest share whose AUC loss is below ``tolerance``
    with the interval's confidence (its lower bound above ``-tolerance``)."""

    frame: pd.DataFrame
    chosen: float
    level: float
    tolerance: float

    def summary(self) -> str:
        row = self.frame.loc[self.frame["share"] == self.chosen].iloc[0]
        return (f"training sample: {self.chosen:.0%} of the visitors ({int(row['offers']):,} offers): AUC "
                f"{row['auc']:.4f} [{row['auc_low']:.4f}, {row['auc_high']:.4f}], calibration error "
                f"{row['ece']:.4f} [{row['ece_low']:.4f}, {row['ece_high']:.4f}] ({self.level:.0%}, held-out "
                f"visitors); AUC lost against the largest sample {row['auc_loss']:+.4f} (at worst "
                f"{row['auc_loss_low']:+.4f}; tolerance {self.tolerance})\n"
                + self.frame.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


def _weighted_ece(y: np.ndarray, p: np.ndarray, w: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with row weights: |weighted mean p - weighted mean y| per equal-width bin of p,
    averaged by the bins' weights."""
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = np.bincount(b, weights=w, minlength=bins)
    gap = np.abs(np.bincount(b, weights=w * p, minlength=bins) - np.bincount(b, weights=w * y, minlength=bins))
    return float(gap.sum() / total.sum()) if total.sum() else float("nan")


def learning_curve(offers: pd.DataFrame, shares: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8), *,
                   test_share: float = 0.2, n_boot: int = 100, level: float = 0.95, tolerance: float = 0.002,
                   seed: int = 0) -> LearningCurve:
    """The sample size a model needs, chosen from the data: a held-out `test_share` of the visitors, then models
    (:class:`pcrules.scoring.AcceptanceModel`) trained on `shares` of all visitors (drawn from the others),
    stratified by whether the visitor ever accepted (the rare class keeps its share in every sample), each scored
    on the held-out visitors: AUC and expected calibration error with a percentile bootstrap over held-out
    visitors (the same resamples for every share, so the AUC lost against the largest sample is paired)."""
    from sklearn.metrics import roc_auc_score

    from ..scoring import AcceptanceModel

    if not 0 < test_share < 1 or not shares or any(not 0 < x <= 1 - test_share for x in shares):
        raise ValueError(f"shares must lie in (0, 1 - test_share], test_share in (0, 1); got {shares}, {test_share}")
    offers = offers.reset_index(drop=True)
    y = (offers["response"].astype(str) == "accept").to_numpy(dtype=int)
    visitor = offers["visitor_id"].astype(object).to_numpy()
    accepted = pd.Series(y).groupby(visitor).transform("max").to_numpy()
    u = visitor_hash(visitor)
    test = stratified_visitors(visitor, accepted, test_share, u)
    rest = ~test
    codes, _ = pd.factorize(visitor[test])
    n_vis = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    weights = [np.bincount(rng.integers(0, n_vis, n_vis), minlength=n_vis)[codes].astype(float)
               for _ in range(n_boot)]
    X_test, y_test = offers.loc[test], y[test]
    tail = 100 * (1 - level) / 2
    rows, boots = [], []
    for share in sorted(shares):
        pick = np.zeros(len(offers), dtype=bool)  # `share` of all visitors, drawn from those not held out
        pick[rest] = stratified_visitors(visitor[rest], accepted[rest], share / (1.0 - test_share), u[rest])
        model = AcceptanceModel().fit(offers.loc[pick], y[pick])
        p = np.clip(model.predict_proba(X_test)[:, 1], 0.0, 1.0)
        auc_b = np.array([roc_auc_score(y_test, p, sample_weight=w) for w in weights])
        ece_b = np.array([_weighted_ece(y_test, p, w) for w in weights])
        boots.append(auc_b)
        ones = np.ones(len(p))
        rows.append({"share": share, "visitors": len(set(visitor[pick])), "offers": int(pick.sum()),
                     "auc": roc_auc_score(y_test, p), "auc_low": np.percentile(auc_b, tail),
                     "auc_high": np.percentile(auc_b, 100 - tail), "ece": _weighted_ece(y_test, p, ones),
                     "ece_low": np.percentile(ece_b, tail), "ece_high": np.percentile(ece_b, 100 - tail)})
    frame = pd.DataFrame(rows)
    frame["auc_loss"] = frame["auc"] - frame["auc"].iloc[-1]
    frame["auc_loss_low"] = [np.percentile(b - boots[-1], tail) for b in boots]
    chosen = float(frame.loc[frame["auc_loss_low"] >= -tolerance, "share"].min())
    return LearningCurve(frame, chosen, level, tolerance)


def train_on_sample(offers: str | os.PathLike[str] | pd.DataFrame, *, curve_share: float = 1.0,
                    shares: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8), seed: int = 0, share: float | None = None,
                    **curve: Any) -> tuple[Any, LearningCurve]:
    """Train the acceptance model on a stratified visitor sample whose size the data chose: the learning curve
    (:func:`learning_curve`) on the logged offers of `curve_share` of the visitors (read partition by partition
    from a partitioned folder), then :func:`pcrules.scoring.training.train_on_offers` on the chosen share of
    them. `share`: train on that share instead (the curve then has it and the largest of `shares`, and says
    what it loses). Returns (the training result, the curve)."""
    from ..scoring.training import train_on_offers

    frame = offers if isinstance(offers, pd.DataFrame) else offers_sample(offers, curve_share)
    if share is not None:
        shares = sorted({min(share, 1.0 - curve.get("test_share", 0.2)), max(shares)})
    lc = learning_curve(frame, shares, seed=seed, **curve)
    if share is not None:
        lc.chosen = min(share, max(lc.frame["share"]))
    visitor = frame["visitor_id"].astype(object).to_numpy()
    y = (frame["response"].astype(str) == "accept").to_numpy(dtype=int)
    accepted = pd.Series(y).groupby(visitor).transform("max").to_numpy()
    pick = stratified_visitors(visitor, accepted, lc.chosen if share is None else share,
                               visitor_hash(visitor, b"pcrules-train-v1"))
    return train_on_offers(frame.loc[pick].reset_index(drop=True), seed=seed), lc


def offers_sample(source: str | os.PathLike[str], share: float) -> pd.DataFrame:
    """The logged offers of about `share` of the visitors of a partitioned history, read partition by partition
    (a partition is a keyed-hash share of the visitors, so whole partitions make a visitor sample: the first
    ceil(share x partitions) of them)."""
    parts = partitions(source)
    take = parts[:max(1, math.ceil(share * len(parts)))]
    frames = [read_partition(p, None, required=("visitor_id", "response"))[0] for p in take]
    return pd.concat(frames, ignore_index=True)


# ============================================================================================ tuning on a sample

SCALED = ("events", "sessions", "visitors", "offers", "holdout", "expected_accepts", "true_expected_accepts",
          "accepted", "declined", "expired", "expected_uplift", "true_expected_uplift")


@dataclass
class SampleEstimate:
    """A backtest on ``k`` of the ``n`` partitions (a keyed-hash sample of the visitors, each visitor in with
    probability k/n) scaled to the whole history by the ratio to its events (every partition's row count is in
    its Parquet footers: known without reading a row): per figure of :data:`SCALED`, ``E x sum(x) / sum(e)``
    over the sampled partitions, with a Student-t interval on k - 1 degrees of freedom from the spread of the
    partitions' residuals ``x - R e`` (the ratio estimator of cluster sampling without replacement).
    ``sample``: the sample's own (reduced) result."""

    figures: pd.DataFrame  # index: figure; columns estimate, low, high
    partitions: tuple[int, int]
    level: float
    sample: Any

    def contains(self, metrics: Mapping[str, Any]) -> dict[str, bool]:
        """Per figure: does the whole history's value (a full backtest's metrics) lie in the interval."""
        return {name: bool(row["low"] <= metrics[name] <= row["high"]) for name, row in self.figures.iterrows()
                if metrics.get(name) is not None}


def _rows(part: Partition) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in part.files)


def sample_backtest(spec: RuleSpec | Mapping[str, Any] | str, source: str | os.PathLike[str], scorer: Any = None,
                    *, share: float = 0.1, level: float = 0.95, **options: Any) -> SampleEstimate:
    """What a tuner reads of a candidate when the history is too large to judge at every slider move: the
    backtest of the first ``ceil(share x n)`` partitions (at least 2), its additive figures scaled to the whole
    history with intervals (:class:`SampleEstimate`). ``options`` as :func:`backtest_partitioned`."""
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    parts = partitions(source)
    n = len(parts)
    k = min(n, max(2, math.ceil(share * n)))
    total_events = float(sum(_rows(p) for p in parts))
    work = [Piece(p.name, {"events": p}) for p in parts[:k]]
    opts = {"queue_status": options.get("queue_status"), "truth": options.get("truth"),
            "effects": options.get("effects"), "effect_columns": _effect_columns(options.get("effects")),
            "keep_offers": False, "keep_decisions": False, "exploration_cost": False}
    partials = run_partitions(_read_and_judge, work, dict(spec.source), scorer, opts,
                              engine=options.get("engine", "processes"), client=options.get("client"),
                              workers=options.get("workers"), progress=options.get("progress", False),
                              desc=f"sample {spec.name}")
    e = np.array([p.metrics["events"] for p in partials], dtype=float)
    values = {name: [p.metrics.get(name) for p in partials] for name in SCALED}
    frame = ratio_figures({name: np.asarray(v, dtype=float) for name, v in values.items()
                           if not any(x is None for x in v)}, e, total_events, n, level)
    return SampleEstimate(frame, (k, n), level, reduce_backtest(spec, partials, engine="sample"))


def ratio_figures(per_partition: Mapping[str, np.ndarray], events: np.ndarray, total_events: float, n: int,
                  level: float = 0.95) -> pd.DataFrame:
    """Figures of ``k = len(events)`` sampled partitions (of `n`) scaled to the whole history's `total_events`:
    per figure ``E x sum(x) / sum(e)`` and its Student-t interval on k - 1 degrees of freedom (the ratio estimator
    of cluster sampling without replacement; see :class:`SampleEstimate`). Index: figure; columns estimate, low,
    high."""
    from scipy.stats import t as student  # type: ignore[import-untyped]

    e = np.asarray(events, dtype=float)
    k = len(e)
    q = student.ppf(0.5 + level / 2, k - 1) if k > 1 else float("nan")
    rows = {}
    for name, values in per_partition.items():
        x = np.asarray(values, dtype=float)
        ratio = x.sum() / e.sum() if e.sum() else float("nan")
        estimate = total_events * ratio
        spread = (x - ratio * e).var(ddof=1) if k > 1 else float("nan")
        half = q * total_events / e.mean() * np.sqrt((1 - k / n) * spread / k) if k and e.mean() else float("nan")
        rows[name] = {"estimate": estimate, "low": estimate - half, "high": estimate + half}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["estimate", "low", "high"])


def partitioned_folder(path: str | os.PathLike[str]) -> Path | None:
    """The events of a history partitioned by visitor: `path` or its ``events/`` when it holds ``part=NNN``
    folders; None otherwise."""
    root = Path(path)
    for folder in (root, root / "events"):
        if folder.is_dir() and any(d.is_dir() and PART_DIR.match(d.name) for d in folder.iterdir()):
            return folder
    return None


@dataclass
class TuningSample:
    """What a tuner built on a sample of the partitions knows of the whole history: the events folder, the
    sampled partitions' names and events, and the whole history's events (from the Parquet footers), so that
    any figure summed per sampled partition scales to the whole history with an interval (:meth:`scale`)."""

    source: str
    names: tuple[str, ...]
    partitions: tuple[int, int]  # (sampled, all)
    part_events: np.ndarray  # events of each sampled partition
    total_events: int
    level: float = 0.95
    options: dict[str, Any] = field(default_factory=dict)  # what recheck's full backtest takes (truth, effects,
    # engine, workers), as the sample was judged

    @property
    def share(self) -> float:
        """The sample's share of the visitors (each partition is a keyed-hash share of them)."""
        return self.partitions[0] / self.partitions[1]

    def scale(self, per_partition: Mapping[str, np.ndarray]) -> pd.DataFrame:
        return ratio_figures(per_partition, self.part_events, self.total_events, self.partitions[1], self.level)

    def estimate(self, figures: pd.DataFrame) -> SampleEstimate:
        """A :class:`SampleEstimate` of scaled `figures` (for :func:`recheck`)."""
        return SampleEstimate(figures, self.partitions, self.level, None)

    def summary(self) -> str:
        k, n = self.partitions
        return (f"a sample of {k} of {n} partitions ({self.share:.0%} of the visitors, "
                f"{int(self.part_events.sum()):,} of {self.total_events:,} events); figures scaled to the whole "
                f"history with {self.level:.0%} intervals")


def read_sample(source: str | os.PathLike[str], share: float = 0.1, *, columns: Sequence[str] | None = None,
                level: float = 0.95) -> tuple[pd.DataFrame, np.ndarray, TuningSample, list[PartitionProblem]]:
    """The events of the first ``ceil(share x n)`` partitions (at least 2) of a partitioned history, as one frame
    (all columns, or `columns`), each row's sampled-partition index (0 .. k-1), the :class:`TuningSample` and
    the problems met while reading. The sample :func:`sample_backtest` judges."""
    if not 0 < share <= 1:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    parts = partitions(source)
    n = len(parts)
    k = min(n, max(2, math.ceil(share * n)))
    frames, problems = [], []
    for part in parts[:k]:
        frame, _, found = read_partition(part, columns)
        frames.append(frame)
        problems += found
    frame = pd.concat(frames, ignore_index=True)
    index = np.repeat(np.arange(k), [len(f) for f in frames])
    sample = TuningSample(str(source), tuple(p.name for p in parts[:k]), (k, n),
                          np.array([len(f) for f in frames], dtype=float), sum(_rows(p) for p in parts), level)
    return frame, index, sample, problems


def recheck(spec: RuleSpec | Mapping[str, Any] | str, source: str | os.PathLike[str], scorer: Any,
            estimate: SampleEstimate, **options: Any) -> tuple[Any, dict[str, bool]]:
    """Before Publish: the full partitioned backtest of the ruleset a tuner chose on a sample, and per scaled
    figure whether the whole history's value lies in the sample's interval (``all(...)``: the sample told the
    truth about it)."""
    full = backtest_partitioned(spec, source, scorer, keep_offers=False, **options)
    return full, estimate.contains(full.metrics)
