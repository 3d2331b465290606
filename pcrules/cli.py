"""`pcrules ...`: validate a ruleset, run the demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import resources
from .errors import SpecError

DEFAULT_RULES = resources.default_rules()
# One set of paths, the README's analyst path, notebooks 02/03 (from notebooks/: ../var/...) and `make tuner`:
# everything generated goes under var/ (git ignores it; `make clean` removes it). The demo keeps its own var/demo/.
PUBLISHED = "var/published"  # publish, rollback, bundle-info, tuner


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its error on one line (no usage block): the option, what is wrong, where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _fail(exc: BaseException | str, option: str | None = None) -> int:
    """One line on stderr, ``error: [option ]what``; exit status 1. A ruleset with several problems lists them
    all, one per line, under that line (validate's report)."""
    if isinstance(exc, SpecError):
        return _spec_fail(exc, option)
    text = " ".join(str(exc).split())  # one line, whatever a library said
    print(f"error: {option + ' ' if option else ''}{text}", file=sys.stderr)
    return 1


def _spec_fail(exc: SpecError, option: str | None = None) -> int:
    where = f"{option} {exc.source}" if option and exc.source else (option or exc.source or "rule spec")
    if len(exc.problems) == 1:
        problem = exc.problems[0]
        if problem.startswith("(file): "):  # cannot read it, not YAML, not UTF-8: the message names the file
            print(f"error: {option + ': ' if option else ''}{' '.join(problem[8:].split())}", file=sys.stderr)
        else:
            print(f"error: {where}: invalid rule spec: {' '.join(problem.split())}", file=sys.stderr)
    else:
        print(f"error: {where}: invalid rule spec, {len(exc.problems)} problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
    return 1


def _os_fail(exc: OSError, option: str, path: str | Path) -> int:
    """An OSError on an option's path, as one line naming both."""
    reason = exc.strerror or str(exc)
    where = exc.filename if exc.filename and str(exc.filename) != str(path) else None
    return _fail(f"{path}: {reason}" + (f" ({where})" if where else ""), option)


def _history_fail(exc: BaseException, option: str, *, format_option: bool = False,
                  column_option: bool = False) -> int:
    """A history file that cannot be loaded: the library's statement and what to do about it on the command line."""
    from .analysis.history import MissingColumns, UnknownFormat

    if isinstance(exc, MissingColumns):
        remedy = "rename them in the file"
        if column_option:
            first = next(iter(exc.missing))
            remedy += f", or name the file's column with --column {first}=THEIR_NAME (repeatable)"
        return _fail(f"{exc}; {remedy} (data/README.md: the {exc.table} schema)", option)
    if isinstance(exc, UnknownFormat):
        endings = ", ".join(e for suffixes in exc.suffixes.values() for e in suffixes[:2])
        remedy = f"name the file {endings}" + (", or give --format csv or --format parquet" if format_option else "")
        return _fail(f"{exc}; {remedy}", option)
    if isinstance(exc, OSError):
        return _os_fail(exc, option, exc.filename or "the file")
    return _fail(exc, option)


def _validate(args: argparse.Namespace) -> int:
    from .core.spec import load_spec

    try:
        spec = load_spec(Path(args.file))
    except SpecError as exc:
        return _spec_fail(exc)
    print(f"ok: {args.file}: ruleset {spec.name!r} version {spec.version}, "
          f"{len(spec.rules)} rule(s), {len(spec.queues)} queue(s)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Train on generated history, publish, replay the sample through the bundle (rules only with --no-model).

    Every input is read and checked before any output is touched; the log is replaced only once the new one
    is complete, and never while a running process has it open."""
    from .analysis.sample import SAMPLE_PATH, read_events
    from .core.spec import load_spec
    from .errors import LogUnavailable
    from .runtime.log.sqlite import refuse_if_open

    events = Path(args.events) if args.events else SAMPLE_PATH
    try:
        spec = load_spec(Path(args.rules))
    except SpecError as exc:
        return _spec_fail(exc, "--rules")
    try:
        rows = list(read_events(events))
    except ValueError as exc:
        return _fail(exc, "--events")
    log_path = Path(args.log)
    if log_path.is_dir() or any(p.exists() and not p.is_dir() for p in log_path.parents):
        return _fail(f"{log_path}: cannot write the decision log there (a directory, or under a file)", "--log")
    progress = sys.stderr.isatty()
    try:
        if args.no_model:
            summary = _replay_rules_only(spec, rows, log_path, progress)
            print(f"pcrules demo: ruleset {spec.name!r} ({spec.version}), no model, over {events}")
            print(summary.report())
        else:
            try:
                from .analysis.demo import describe, replay_with_goals, train_and_publish
            except ImportError as exc:
                return _fail(f"the demo trains a model and needs pcrules[analysis] ({exc}); or run with --no-model")
            refuse_if_open(log_path)  # before training and publishing, not after
            out_dir = log_path.parent
            print("pcrules demo: generating history, training the acceptance model, publishing a bundle ...")
            bundle = train_and_publish(Path(args.rules), out_dir)
            print(describe(bundle))
            summary, goals = replay_with_goals(bundle, log_path, events, progress, rows=rows)
            print(f"replayed {events} through {bundle}")
            print(summary.report())
            print(f"goals reported        {goals:>9,}")
            print(f"published bundles: {out_dir / 'published'}")
    except LogUnavailable as exc:
        return _fail(exc, "--log")
    except OSError as exc:  # the log's directory cannot be made or written
        return _os_fail(exc, "--log", log_path)
    print(f"decision log: {log_path}")
    return 0


def _replay_rules_only(spec: Any, rows: list[dict[str, Any]], log_path: Path, progress: bool) -> Any:
    from .analysis.replay import replay
    from .runtime.log.sqlite import SQLiteDecisionLog, fresh_log
    from .runtime.runtime import Runtime

    with fresh_log(log_path) as new_path, Runtime(spec, log=SQLiteDecisionLog(new_path)) as runtime:
        return replay(runtime, rows, progress=progress, total=len(rows))


# --------------------------------------------------------------------------- init: a starting point for an analyst

INIT_HEADER = """\
# A ruleset to start from (`pcrules init`): the embedded default, to edit. Check it with `pcrules validate`,
# publish it with `pcrules publish --rules ... --out var/published`; README "The rule spec" documents every key.
#   policy:  one offer at a time per session, and the limits every rule shares (each key is commented below).
#   queues:  <name>: max_wait_s (no offer while the queue's estimated wait is longer), capacity_per_hour (the
#            planning figure of backtest and tuning), hours (tz, days, start, end: no offer outside them).
#   rules:   - name (unique), priority (higher wins when several match), description (optional),
#              when: conditions that must all hold; a bare value means eq, else {op: value} with op one of
#                    eq ne gt gte lt lte in not_in matches exists; any_of: [ {...}, {...} ] is an OR;
#                    fields: every event field (page, seconds_on_page, pages_viewed, device, ...), score (the
#                    model's P(accept): no model, never matches), minutes_on_page, hour, weekday,
#              offer: queue (one of queues), default_ui, metadata (templates: {page}, {minutes}, {seconds} ...).

"""


def _init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    target = directory / "rules.yaml"
    if directory.exists() and not directory.is_dir():
        return _fail(f"{directory}: not a directory (pcrules init DIR writes DIR/rules.yaml)")
    if target.exists() or target.is_symlink():
        return _fail(f"{target} exists already; pcrules init never overwrites a file (move it away, or init "
                     f"another directory)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        text = INIT_HEADER + DEFAULT_RULES.read_text(encoding="utf-8")
        with open(target, "x", encoding="utf-8") as out:  # "x": never overwrite, even in a race
            out.write(text)
    except FileExistsError:
        return _fail(f"{target} exists already; pcrules init never overwrites a file")
    except OSError as exc:
        return _fail(f"{target}: cannot write ({exc.strerror or exc})")
    print(f"wrote {target}: the default ruleset, commented; edit it, then `pcrules validate {target}`")
    return 0


def _add_init_command(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser("init", help="write a commented rules.yaml to start from (never overwrites)")
    init.add_argument("dir", nargs="?", default=".", help="directory to write rules.yaml in (made if missing; "
                                                         "default: the current directory)")
    init.set_defaults(run=_init)


# --------------------------------------------------------------------------- bundles: publish, rollback, bundle-info


def _publish(args: argparse.Namespace) -> int:
    import json

    from .bundle import publish
    from .errors import PcrulesError

    try:
        metrics = None
        if args.metrics:
            try:
                metrics = json.loads(Path(args.metrics).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                return _fail(f"{args.metrics}: cannot read the metrics JSON ({exc})", "--metrics")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            return _fail(f"{out}: not a directory (a publish directory holds current and versions/)", "--out")
        path = publish(Path(args.rules), Path(args.model) if args.model else None, out, metrics,
                       activate=not args.no_activate, via="cli")
    except SpecError as exc:
        return _spec_fail(exc, "--rules")
    except (PcrulesError, OSError) as exc:
        return _fail(exc)
    print(f"published {path.name}: {path}" + ("" if args.no_activate else f" (now current in {args.out})"))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from .bundle import rollback
    from .errors import PcrulesError

    try:
        result = rollback(Path(args.out), operator=args.operator, via="cli")
    except (PcrulesError, OSError) as exc:
        return _fail(exc)
    print(f"rolled back: current is now {result.version} (was {result.previous}): {result.path}; "
          f"recorded as {result.operator}'s")
    return 0


def _bundle_info(args: argparse.Namespace) -> int:
    from .bundle import CURRENT, STAGING_PREFIX, VERSIONS, BundleError, history, list_versions, load_bundle
    from .errors import PcrulesError

    path = Path(args.path)
    try:
        if not (path / "manifest.json").exists() and ((path / CURRENT).is_symlink() or (path / VERSIONS).is_dir()):
            past = history(path)
            print(f"{path}: current {past[-1] if past else '(none)'}; history (oldest first): {', '.join(past) or '-'}")
            for leftover in sorted(path.glob(f"{STAGING_PREFIX}*")):
                print(f"  leftover {leftover.name} (an interrupted publish; never served; removed by the next publish)")
            status = 0
            for version in list_versions(path):
                mark = "*" if past and version == past[-1] else " "
                try:
                    b = load_bundle(path / VERSIONS / version)
                    model = (b.manifest.get("model") or {}).get("kind", "none")
                    print(f"{mark} {version}  ruleset {b.spec.name!r} {b.spec.version}  model {model}  ok")
                except BundleError as exc:
                    status = 1 if mark == "*" else status
                    print(f"{mark} {version}  REFUSED: {exc}")
            return status
        b = load_bundle(path)
    except (PcrulesError, OSError) as exc:
        return _fail(exc)
    for line in describe_bundle(b):
        print(line)
    return 0


def describe_bundle(b: Any) -> list[str]:
    """A loaded bundle in a few lines: version, when made, rules, model, held-out metrics, libraries."""
    m, spec = b.manifest, b.spec
    lines = [f"bundle {b.version} at {b.path}: verified", f"  created   {m.get('created', '?')}"]
    rules = sorted(spec.rules, key=lambda r: -r.priority)
    shown = ", ".join(f"{r.name} ({r.queue})" for r in rules[:6]) + (f", ... {len(rules) - 6} more"
                                                                      if len(rules) > 6 else "")
    lines.append(f"  ruleset   {spec.name!r} version {spec.version}: {len(rules)} rule(s) by priority: "
                 f"{shown or 'none'}; queues {', '.join(spec.queues) or 'none'}")
    policy = spec.policy
    lines.append(f"  policy    at most {policy.max_offers_per_session} offer(s) per session, an offer waits "
                 f"{policy.offer_timeout_s:g} s for an answer, holdout {policy.holdout:.0%}")
    model = m.get("model") or {}
    if not model:
        lines.append("  model     none (rules only: a condition on score never matches)")
    else:
        features = getattr(b.scorer, "features", None)
        fields = [*getattr(features, "categorical", ()), *(n.field for n in getattr(features, "numeric", ()))]
        lines.append(f"  model     {model.get('kind', '?')}" + (f" on {', '.join(fields)}" if fields else ""))
    lines.extend(_metrics_lines(m.get("metrics")))
    lines.append(f"  libraries {', '.join(f'{k} {v}' for k, v in (m.get('libraries') or {}).items())}")
    from .bundle import audit_lines

    lines.extend(audit_lines(m))
    return lines


def _metrics_lines(metrics: Any) -> list[str]:
    """The training metrics a manifest records, as a person reads them (the full JSON is in manifest.json)."""
    if not metrics:
        return ["  metrics   none recorded"]
    if not isinstance(metrics, dict):
        return [f"  metrics   {_brief(metrics)}"]
    lines = []
    held = metrics.get("held_out")
    if isinstance(held, dict):
        parts = []
        if isinstance(held.get("n"), int):
            rows = f"{held['n']:,} offers"
            if isinstance(held.get("positives"), int):
                rows += f", {held['positives']:,} accepted"
            parts.append(rows)
        for key, name, fmt in (("roc_auc", "AUC", ".3f"), ("brier", "Brier", ".4f"), ("log_loss", "log loss", ".4f"),
                               ("ece", "calibration error", ".4f"), ("base_rate", "accept rate", ".1%"),
                               ("mean_predicted", "mean predicted", ".1%")):
            if isinstance(held.get(key), (int, float)):
                parts.append(f"{name} {held[key]:{fmt}}")
        lines.append(f"  held out  {'; '.join(parts) or 'no figures'}")
    counts = [f"{metrics[k]:,} {name}" for k, name in (("train_rows", "training rows"), ("test_rows", "held-out rows"))
              if isinstance(metrics.get(k), int)]
    if counts:
        lines.append(f"  trained   on {', '.join(counts)}")
    warnings = metrics.get("warnings")
    if isinstance(warnings, list) and warnings:
        lines.append(f"  warnings  {len(warnings)}: {_brief(warnings[0], 110)}" + (" (and more: manifest.json)"
                                                                                 if len(warnings) > 1 else ""))
    other = [k for k in sorted(metrics) if k not in ("held_out", "train_rows", "test_rows", "warnings")]
    scalars = [f"{k} {_brief(metrics[k], 40)}" for k in other if isinstance(metrics[k], (int, float, str, bool))]
    nested = [k for k in other if not isinstance(metrics[k], (int, float, str, bool))]
    if scalars:
        lines.append(f"  metrics   {'; '.join(scalars)}")
    if nested:
        lines.append(f"  also      {', '.join(nested)} (in manifest.json)")
    return lines


def _brief(value: object, limit: int = 120) -> str:
    text = value if isinstance(value, str) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _add_bundle_commands(commands: argparse._SubParsersAction) -> None:
    pub = commands.add_parser("publish", help="write a verified bundle (rules + model) and make it current")
    pub.add_argument("--rules", required=True, help="rule spec YAML")
    pub.add_argument("--model", help="model JSON (a scorer's to_dict()); omit for a rules-only bundle")
    pub.add_argument("--metrics", help="training metrics JSON to record in the manifest")
    pub.add_argument("--out", default=PUBLISHED, help=f"publish directory (default: {PUBLISHED})")
    pub.add_argument("--no-activate", action="store_true", help="write the version but leave current alone")
    pub.set_defaults(run=_publish)
    back = commands.add_parser("rollback", help="make the previously current bundle current again")
    back.add_argument("--out", default=PUBLISHED, help=f"publish directory (default: {PUBLISHED})")
    back.add_argument("--operator", help="who rolls back, recorded in the manifest (default: the OS user)")
    back.set_defaults(run=_rollback)
    info = commands.add_parser("bundle-info", help="verify and describe a bundle or a publish directory")
    info.add_argument("path", nargs="?", default=PUBLISHED,
                      help=f"publish dir, <dir>/current or a version dir (default: {PUBLISHED})")
    info.set_defaults(run=_bundle_info)


# --------------------------------------------------------------------------- sample-data: the synthetic world


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {value}")
    return value


def _busy(host: str, port: int) -> str | None:
    """Why nothing can listen on host:port right now (None: it can), checked before any banner is printed."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Voila bind
            probe.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _sample_data(args: argparse.Namespace) -> int:
    try:
        from .analysis.world import generate
    except ImportError as exc:  # numpy / pandas are analysis dependencies, not runtime ones
        print(f"error: sample-data needs numpy and pandas ({exc})", file=sys.stderr)
        return 1
    import datetime as dt

    try:
        dt.datetime.fromisoformat(args.start)
    except ValueError:
        return _fail(f"expected an ISO-8601 date such as 2025-11-24, got {args.start!r}", "--start")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail(f"{out}: not a directory", "--out")
    try:
        world = generate(visitors=args.visitors, seed=args.seed, start=args.start, days=args.days,
                         progress=sys.stderr.isatty() and not args.quiet)
        paths = world.write(out, format=args.format, parts=args.partitions)
    except ImportError as exc:  # Parquet without pyarrow
        return _fail(f"cannot write {args.format} ({exc}); try --format csv.gz", "--format")
    except OSError as exc:
        return _os_fail(exc, "--out", out)
    except (ValueError, TypeError) as exc:
        return _fail(exc)
    print(f"pcrules sample-data: {args.visitors:,} visitors, seed {args.seed}, {args.days} day(s) from {args.start}")
    print(world.summary())
    for name, path in paths.items():
        size = sum(f.stat().st_size for f in path.rglob("*.parquet")) if path.is_dir() else path.stat().st_size
        print(f"{name:<11} {path}  ({size / 1e6:.2f} MB)")
    return 0


def _add_sample_data_command(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("sample-data",
                              help="generate a synthetic world with a known truth (events, page views, offers)")
    gen.add_argument("--visitors", type=_positive_int, default=10_000,
                     help="visitors (about 16 events each; default 10000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed gives the same data")
    gen.add_argument("--out", required=True, help="directory to write events, page_views and offers to")
    gen.add_argument("--format", choices=("parquet", "csv.gz"), default="parquet", help="file format (default parquet)")
    gen.add_argument("--days", type=_positive_int, default=7, help="days of traffic (default 7)")
    gen.add_argument("--start", default="2025-11-24",
                     help="first day, ISO date in site time UTC+1 (default 2025-11-24)")
    gen.add_argument("--partitions", type=_positive_int,
                     help="write each table as <out>/<table>/part=NNN/ folders partitioned by visitor (Parquet)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(run=_sample_data)


def _share(text: str) -> float:
    """A share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.2, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {text}")
    return value


def _sample_share(text: str) -> float | str:
    """--sample: ``auto`` (a learning curve chooses) or a share of the visitors in (0, 1]."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a share of the visitors such as 0.2, got {text!r}") \
            from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected auto or a share of the visitors in (0, 1], got {text}")
    return value


def _partitioned_offers(path: str | None) -> Path | None:
    """The offers of a history partitioned by visitor: `path` or its offers/ holding part=NNN folders."""
    if not path:
        return None
    for folder in (Path(path), Path(path) / "offers"):
        if folder.is_dir() and any(d.is_dir() and d.name.startswith("part=") for d in folder.iterdir()):
            return folder
    return None


def _train(args: argparse.Namespace) -> int:
    from .analysis.history import HistoryError, load_offers
    from .scoring.training import train_on_offers, write_model

    parts = _partitioned_offers(args.offers) if not args.log else None
    sampled = parts is not None or args.sample is not None
    share = args.sample if isinstance(args.sample, float) else None
    offers: Any = None
    if parts is not None:
        offers, source = parts, str(parts)
    elif args.log:
        offers = _offers_from_log(args.log)
        if offers is None:
            return 1
        source = args.log
    else:
        try:
            offers, report = load_offers(args.offers, columns=args.columns, format=args.format)
        except (HistoryError, OSError) as exc:
            return _history_fail(exc, "--offers", format_option=True, column_option=True)
        if report.problems:
            print(report, file=sys.stderr)
        source = args.offers
    for option, path in (("--out", args.out), ("--metrics-out", args.metrics_out)):
        if path and (Path(path).is_dir() or any(p.exists() and not p.is_dir() for p in Path(path).parents)):
            return _fail(f"{path}: cannot write a file there (a directory, or under a file)", option)
    curve = None
    try:
        if sampled:  # a stratified visitor sample, its size chosen by a learning curve (or --sample SHARE)
            from .analysis.partitioned import train_on_sample

            result, curve = train_on_sample(offers, seed=args.seed, share=share)
        else:
            result = train_on_offers(offers, seed=args.seed)
    except (ValueError, KeyError) as exc:
        return _fail(f"{source}: {exc}", "--log" if args.log else "--offers")
    except OSError as exc:
        return _os_fail(exc, "--offers", source)
    try:
        write_model(result, args.out, args.metrics_out)
    except OSError as exc:
        return _os_fail(exc, "--out", args.out)
    if curve is not None:
        why = "the share given by --sample" if share else \
            "the smallest share that loses less than the tolerance in AUC, with the interval's confidence"
        print(f"learning curve (held-out visitors; the model is trained on {why}):")
        print(curve.summary())
    print(f"measured on {result.n_test:,} held-out offers after training on {result.n_train:,}; the model written "
          f"is then trained on all {result.n_train + result.n_test:,}")
    print(result.test.summary())
    for name, support in result.model.support_.items():
        unit = " s" if "seconds" in name else ""
        print(f"support: {name} {support.low:,.4g}{unit} to {support.high:,.4g}{unit} "
              f"(values beyond are scored like the nearest end)")
    if args.calibration:
        for name in result.test.calibration:
            print(f"\ncalibration by {name} (held out):")
            print(result.test.calibration_frame(name).to_string(float_format="{:.4g}".format))
    print(f"model: {args.out}" + (f"; metrics: {args.metrics_out}" if args.metrics_out else ""))
    sys.stdout.flush()  # the report first, then what it cannot support
    for warning in result.test.warnings:  # on stderr, one line each
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _offers_from_log(log: str) -> Any:
    """The ended offers of a decision log (SQLite file or PostgreSQL URL) as a training table; None when it cannot
    be read (said in one line)."""
    from .logdb import describe
    from .scoring.training import offers_from_log

    try:
        return offers_from_log(log)
    except FileNotFoundError:
        _fail(f"{log}: no such decision log", "--log")
    except Exception as exc:  # the database's own words (sqlite3, psycopg), in one line, without a password
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        _fail(f"{describe(log)}: cannot read it as a decision log ({reason})", "--log")
    return None


def _add_train_command(commands: Any) -> None:
    train = commands.add_parser("train", help="train the acceptance model on past offers; write a model file")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--offers", help="offers table (Parquet or CSV, see data/README.md), or a folder "
                                         "partitioned by visitor (part=NNN, as sample-data --partitions writes)")
    source.add_argument("--log", metavar="PATH|URL",
                        help="or the ended offers of a decision log: an SQLite file or a postgresql:// URL")
    _add_history_options(train, "offers")
    train.add_argument("--out", required=True, help="model file to write (JSON; publish it with `pcrules publish`)")
    train.add_argument("--metrics-out", help="held-out metrics to write (JSON; `publish --metrics` takes it)")
    train.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    train.add_argument("--sample", type=_sample_share, metavar="auto|SHARE",
                       help="train on a stratified visitor sample: auto (a learning curve chooses its size; the "
                            "default when --offers is a folder partitioned by visitor, part=NNN) or a share of the "
                            "visitors in (0, 1]; prints the curve and the AUC / calibration intervals")
    train.add_argument("--calibration", action="store_true",
                       help="also print the held-out calibration per time-on-page and time-on-site bin "
                            "(always in --metrics-out)")
    train.set_defaults(run=_train)


# --------------------------------------------------------------------------- serve: the reference HTTP server


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server.serve import main as serve_main
    except ImportError as exc:  # starlette / uvicorn / redis / prometheus-client are the `server` extra
        print(f"error: pcrules serve needs the server dependencies: pip install 'pcrules[server]' ({exc})",
              file=sys.stderr)
        return 1
    if args.bundle and not Path(args.bundle).exists():
        return _fail(f"{args.bundle}: no such publish directory or bundle", "--bundle")
    if args.rules:  # a ruleset's problems as the CLI states them (serve loads it again, with the rest)
        from .core.spec import load_spec

        try:
            load_spec(Path(args.rules))
        except SpecError as exc:
            return _spec_fail(exc, "--rules")
    busy = _busy(args.host, args.port)
    if busy:  # one line, before the banner (uvicorn would print it all, then fail)
        return _fail(f"{busy} (choose another with --port)")
    return serve_main(args)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    srv = commands.add_parser("serve", help="run the HTTP server (observe / answer / queues / metrics), "
                                            "optionally with the demo site")
    source = srv.add_mutually_exclusive_group()
    source.add_argument("--bundle", help="serve a published bundle: a publish dir (or its current), followed when "
                                         "a Publish or rollback moves current; a version dir stays as it is")
    srv.add_argument("--pin-bundle", action="store_true", default=None,
                     help="keep the version loaded at start until a reload (SIGHUP, POST /v1/admin/reload)")
    source.add_argument("--rules", help="serve a rule spec YAML (default: the embedded one; with --demo the demo's)")
    srv.add_argument("--demo", action="store_true", help="also serve the demo site, Pega stand-in and CSR console")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8765, help="port (default 8765)")
    srv.add_argument("--redis", metavar="URL", help="share state between workers in Redis (redis://host:port/db, "
                                                    "redis+cluster://h1:p1,h2:p2, redis+sentinel://h1:p1/master)")
    srv.add_argument("--log", metavar="PATH|URL", help="decision log to append to: an SQLite file or a "
                                                       "postgresql:// URL (journaled here first; default: none)")
    srv.add_argument("--workers", type=_positive_int, default=1, help="worker processes (more than 1 needs --redis)")
    srv.add_argument("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
                     help="another site whose pages may call the public routes, e.g. https://www.example.com "
                          "(repeat for more; none by default)")
    srv.add_argument("--trusted-proxy", action="append", dest="trusted_proxies", metavar="ADDRESS",
                     help="a reverse proxy (address or network) whose X-Forwarded-For is believed (repeatable)")
    srv.add_argument("--metrics-public", action="store_true", default=None,
                     help="serve /metrics without the operator token (a scraper on a private network)")
    srv.add_argument("--allow-volatile-redis", action="store_true", default=None,
                     help="run on a Redis that keeps no append-only file synced every second or always (refused "
                          "otherwise: a restart would forget caps and cooldowns; a loss is still detected, 503)")
    srv.set_defaults(run=_serve)


# --------------------------------------------------------------------------- dashboard: the Voila ops dashboard


def _dashboard(args: argparse.Namespace) -> int:
    try:
        from .ops.voila import serve
    except ImportError as exc:  # voila / ipywidgets / matplotlib are the `dashboard` extra
        return _fail(f"the dashboard needs pcrules[dashboard] (voila, ipywidgets, matplotlib): {exc}")
    url = "://" in args.log  # a database URL (postgresql://...): the dashboard names any problem with it
    log = Path(args.log)
    if not url and log.is_dir():
        return _fail(f"{log}: a directory, not a decision log (an SQLite file)", "--log")
    if not url and log.exists():
        try:
            with open(log, "rb") as handle:
                head = handle.read(16)
        except OSError as exc:
            return _os_fail(exc, "--log", log)
        if head and head != b"SQLite format 3\x00":
            return _fail(f"{log}: not a decision log (not an SQLite database)", "--log")
    if args.bundle and not Path(args.bundle).exists():
        return _fail(f"{args.bundle}: no such publish directory or bundle", "--bundle")
    busy = _busy(args.host, args.port)
    if busy:  # Voila would move to the next port while we print this one
        return _fail(f"{busy} (choose another with --port)")
    try:
        auth = _auth(args)
        return serve(args.log if url else log, port=args.port, host=args.host, bundle_path=args.bundle,
                     base_url=args.base_url, cull_idle_s=args.cull_idle, auth=auth)
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)


def _add_voila_options(parser: argparse.ArgumentParser, *, port: int, prefix: str) -> None:
    """What every Voila app the CLI serves takes: where it listens, behind which prefix, when idle kernels go."""
    parser.add_argument("--port", type=_port, default=port, help=f"port (default {port})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; beyond loopback every request needs a token or a "
                             "trusted SSO proxy)")
    parser.add_argument("--token-file", metavar="PATH",
                        help="operators' tokens, one name:token a line (else $PCRULES_DASHBOARD_TOKEN; else one is "
                             "generated and printed once); needed beyond 127.0.0.1")
    parser.add_argument("--trusted-proxy", metavar="ADDR", action="append",
                        help="an SSO reverse proxy's address or network (repeatable): its X-Forwarded-User is the "
                             "operator, without a token")
    parser.add_argument("--base-url", default="/", help=f"URL prefix behind a proxy, e.g. {prefix} (default /)")
    parser.add_argument("--cull-idle", type=_positive_int, default=600,
                        help="shut down a page's kernel after this many idle seconds without a browser (default 600)")


def _add_dashboard_command(commands: argparse._SubParsersAction) -> None:
    dash = commands.add_parser("dashboard", help="serve the Voila ops dashboard on a decision log (127.0.0.1)")
    dash.add_argument("--log", default="var/demo/decisions.sqlite",
                      help="decision log: a SQLite file or a postgresql:// URL (default: the demo's)")
    dash.add_argument("--bundle", help="publish directory or bundle to show as the live bundle (default: none)")
    _add_voila_options(dash, port=8866, prefix="/ops/")
    dash.set_defaults(run=_dashboard)


# --------------------------------------------------------------------------- tuner: the Voila trigger tuner


def _tuner(args: argparse.Namespace) -> int:
    try:
        from .analysis.tuner import BUNDLE_ENV, EVENTS_ENV
        from .analysis.tuner_app import LOGGING_SPEC_ENV, SAMPLE_SHARE, SAMPLE_SHARE_ENV
        from .ops.voila import app_env, serve_app
    except ImportError as exc:  # numpy / pandas, voila / ipywidgets: the `analysis` and `dashboard` extras
        return _fail(f"the tuner needs pcrules[analysis,dashboard] (pandas, voila, ipywidgets): {exc}")
    from .analysis.history import HistoryError, check_columns
    from .analysis.partitioned import partitioned_folder
    from .bundle import current_version, load_bundle
    from .core.spec import load_spec
    from .errors import PcrulesError

    events = Path(args.events) if args.events else resources.sample_events()
    if not events.exists():
        return _fail(f"--events {events}: no such events file or history folder")
    if not events.is_dir():  # a file: its header now, rather than a message in the page once it is open
        try:
            check_columns(events, "events")
        except HistoryError as exc:
            return _history_fail(exc, "--events")
    bundle = Path(args.bundle)
    try:
        if (bundle / "manifest.json").exists() or bundle.name == "current":
            return _fail(f"--bundle {bundle}: give the publish directory (the one holding current and versions/), "
                         f"not one version: Publish adds versions to it")
        if bundle.exists() and not bundle.is_dir():
            return _fail(f"--bundle {bundle}: not a directory")
        if bundle.is_dir() and current_version(bundle) is not None:
            load_bundle(bundle / "current")  # refuse a tampered or broken bundle here, in one line
        if args.logging_spec:
            load_spec(Path(args.logging_spec))
    except SpecError as exc:
        return _spec_fail(exc, "--logging-spec")
    except (PcrulesError, OSError) as exc:
        return _fail(exc, "--bundle")
    busy = _busy(args.host, args.port)
    if busy:  # Voila would move to the next port while we print this one; before any note, one line
        return _fail(f"{busy} (choose another with --port)")
    if not (bundle.is_dir() and current_version(bundle) is not None):
        print(f"note: no bundle in {bundle} yet: the tuner starts from the embedded default rules without a model, "
              f"and Publish writes the first version there", file=sys.stderr)
    env = app_env({EVENTS_ENV: events, BUNDLE_ENV: bundle, LOGGING_SPEC_ENV: args.logging_spec})
    env.pop(SAMPLE_SHARE_ENV, None)
    if partitioned_folder(events) is not None:  # not loaded whole: a sample of the partitions, then a recheck
        share = args.sample_share or SAMPLE_SHARE
        env[SAMPLE_SHARE_ENV] = repr(share)
        print(f"note: {events} is partitioned by visitor: the tuner works on {share:.0%} of its partitions (at least "
              f"2), shows its figures scaled to the whole history with intervals, and Publish rechecks the ruleset "
              f"with a backtest of every partition first", file=sys.stderr)
    try:
        auth = _auth(args)  # beyond loopback there always is one
        return serve_app(resources.triggers_notebook(), env, port=args.port, host=args.host, base_url=args.base_url,
                         cull_idle_s=args.cull_idle, auth=auth,
                         banner=f"trigger tuner: {{url}}  (history {events.absolute()}, bundle {bundle.absolute()}; "
                                f"Ctrl-C stops)")
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)


def _auth(args: argparse.Namespace) -> Any:
    """The sign-in a Voila app needs (pcrules.ops.auth.AuthConfig), or None on loopback without options; a bad
    token file or address raises ValueError (one line)."""
    from .ops.auth import config_from_options

    return config_from_options(args.host, args.token_file, args.trusted_proxy, err=sys.stderr)


def _add_tuner_command(commands: argparse._SubParsersAction) -> None:
    tun = commands.add_parser("tuner", help="serve the Voila trigger tuner on a history and a publish directory "
                                            "(127.0.0.1)")
    tun.add_argument("--bundle", default=PUBLISHED,
                     help=f"publish directory: its current bundle gives the rules and model, Publish adds a version "
                          f"(default: {PUBLISHED}; made by the first Publish)")
    tun.add_argument("--events", help="history: an events file (CSV, .csv.gz, Parquet) or a folder as `pcrules "
                                      "sample-data` writes (default: the shipped sample)")
    tun.add_argument("--logging-spec", metavar="RULES",
                     help="the ruleset that logged the history's offers (real history: Publish checks against the "
                          "log with it; a generated world knows its own)")
    tun.add_argument("--sample-share", type=_share, metavar="SHARE",
                     help="on a history partitioned by visitor (part=NNN): the share of its partitions the tuner "
                          "works on, in (0, 1] (default 0.1, at least 2 partitions)")
    _add_voila_options(tun, port=8867, prefix="/tuner/")
    tun.set_defaults(run=_tuner)


# --------------------------------------------------------------------------- backtest: a ruleset over recorded events


def _backtest(args: argparse.Namespace) -> int:
    try:
        import pandas as pd

        from .analysis.backtest import backtest
    except ImportError as exc:  # numpy / pandas are analysis dependencies, not runtime ones
        print(f"error: backtest needs numpy and pandas ({exc})", file=sys.stderr)
        return 1
    from .analysis.history import HistoryError, load_events
    from .analysis.partitioned import partitioned_folder
    from .bundle import load_bundle
    from .errors import PcrulesError

    try:
        bundle = load_bundle(Path(args.bundle))
    except (PcrulesError, OSError) as exc:
        return _fail(exc, "--bundle")
    if args.engine in ("processes", "dask") or partitioned_folder(Path(args.events)) is not None:
        return _backtest_partitioned(args, bundle, pd)
    try:
        events, report = load_events(Path(args.events), columns=args.columns, format=args.format)
    except (HistoryError, OSError) as exc:
        return _history_fail(exc, "--events", format_option=True, column_option=True)
    try:
        status = _queue_status_option(args, pd, bundle)
    except ValueError as exc:
        return _fail(exc, "--queue-status")
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or any(p.exists() and not p.is_dir() for p in out.parents)):
        return _fail(f"{out}: cannot write a file there (a directory, or under a file)", "--out")
    try:
        result = backtest(bundle.spec, events, bundle.scorer, queue_status=status, engine=args.engine,
                          progress=sys.stderr.isatty() and not args.quiet)
    except (PcrulesError, ValueError) as exc:
        return _fail(exc)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            frame = events[["ts", "visitor_id", "session_id", "page", "seconds_on_page"]].join(result.decisions)
            if out.suffix == ".parquet":
                frame.to_parquet(out, index=False)
            else:
                frame.to_csv(out, index=False)
        except (OSError, ValueError, ImportError) as exc:
            return _fail(f"{out}: cannot write ({exc})", "--out")
    if report.rows_dropped or report.rows_coerced or report.rows_unsorted:
        print(report, file=sys.stderr)
    if len(events) == 0 or result.metrics["refused"] == len(events):
        print(f"error: no event of {args.events} could be judged ({report.rows_dropped:,} row(s) dropped while "
              f"loading, {result.metrics['refused']:,} refused by the runtime's checks): see the problems above",
              file=sys.stderr)
        return 1
    print(f"pcrules backtest: bundle {bundle.version} over {args.events}")
    print(result.summary())
    if args.out:
        print(f"decisions: {args.out}")
    return 0


def _backtest_partitioned(args: argparse.Namespace, bundle: Any, pd: Any) -> int:
    """pcrules backtest over a history partitioned by visitor (pcrules.analysis.partitioned), or on Dask."""
    from .analysis.partitioned import backtest_partitioned, partitioned_folder

    folder = partitioned_folder(Path(args.events)) or Path(args.events)
    if not folder.exists():
        return _fail(f"{folder}: no such events folder", "--events")
    if args.out or args.columns or args.format:
        return _fail("a partitioned backtest writes no per-event decisions and reads its Parquet columns by "
                     "their own names (leave out --out, --column and --format)", "--events")
    try:
        status = _queue_status_option(args, pd, bundle)
    except ValueError as exc:
        return _fail(exc, "--queue-status")
    engine = "processes" if args.engine == "fast" else args.engine
    client = None
    try:
        if args.scheduler:
            from dask.distributed import Client

            client = Client(args.scheduler)
        result = backtest_partitioned(bundle.spec, folder, bundle.scorer, engine=engine, client=client,
                                      workers=args.workers, queue_status=status, keep_offers=False,
                                      progress=sys.stderr.isatty() and not args.quiet)
    except ImportError as exc:
        return _fail(f"--engine dask needs dask[distributed] (pip install 'pcrules[scale]'): {exc}", "--engine")
    except (OSError, ValueError) as exc:
        return _fail(exc, "--events")
    finally:
        if client is not None:
            client.close()
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"pcrules backtest: bundle {bundle.version} over {folder} (partitioned by visitor)")
    print(result.summary())
    return 0


QUEUE_STATUS_COLUMNS = ("ts", "queue", "agents_available", "estimated_wait_s")


def _queue_status_option(args: argparse.Namespace, pd: Any, bundle: Any) -> Any:
    """The --queue-status table of a backtest (None without the option); ValueError as _read_queue_status."""
    return _read_queue_status(pd, Path(args.queue_status), bundle.spec.queues) if args.queue_status else None


def _read_queue_status(pd: Any, path: Path, queues: Any) -> Any:
    """The queue status timeline, read and its columns checked: ValueError naming the file otherwise."""
    name = path.name.lower()
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        frame = pd.read_parquet(path) if name.endswith((".parquet", ".pq")) else pd.read_csv(path)
    except Exception as exc:  # pandas' and pyarrow's many errors: not CSV, not Parquet, not UTF-8 ...
        kind = "Parquet" if name.endswith((".parquet", ".pq")) else "CSV (any other name than .parquet)"
        raise ValueError(f"{path}: cannot read as {kind} ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("ts", "queue") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)} (a queue status timeline has "
                         f"ts, queue, and agents_available and/or estimated_wait_s); the file has: "
                         f"{', '.join(repr(str(c)) for c in frame.columns[:30]) or 'no columns'}")
    unknown = sorted(set(frame["queue"].dropna().astype(str)) - set(queues))
    if unknown:
        raise ValueError(f"{path}: unknown queue(s) {', '.join(unknown[:10])} (the bundle's ruleset has "
                         f"{', '.join(queues)})")
    return frame


def _column_pair(text: str) -> tuple[str, str]:
    ours, sep, theirs = text.partition("=")
    if not sep or not ours.strip() or not theirs.strip():
        raise argparse.ArgumentTypeError(f"expected OURS=THEIRS (e.g. visitor_id=VisitorID), got {text!r}")
    return ours.strip(), theirs.strip()


class _Columns(argparse.Action):
    """--column OURS=THEIRS, repeatable, gathered into one mapping."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        mapping = dict(getattr(namespace, self.dest) or {})
        mapping[values[0]] = values[1]
        setattr(namespace, self.dest, mapping)


def _add_history_options(parser: argparse.ArgumentParser, table: str) -> None:
    """What a command reading a history file takes besides its path: the format, the file's column names."""
    parser.add_argument("--format", choices=("csv", "parquet"),
                        help="the file's format when its name does not say (.csv, .csv.gz, .parquet)")
    parser.add_argument("--column", dest="columns", type=_column_pair, action=_Columns, metavar="OURS=THEIRS",
                        help=f"the file's name for one of our {table} columns (data/README.md lists them), "
                             f"e.g. visitor_id=VisitorID; repeatable")


def _add_backtest_command(commands: argparse._SubParsersAction) -> None:
    bt = commands.add_parser("backtest", help="what a bundle's ruleset and model would have decided on recorded events")
    bt.add_argument("--bundle", required=True, help="bundle: publish dir, <dir>/current or a version dir")
    bt.add_argument("--events", required=True, help="events file (CSV, .csv.gz or Parquet; data/README.md schema)")
    _add_history_options(bt, "events")
    bt.add_argument("--out", help="write the per-event decisions (.parquet, else CSV)")
    bt.add_argument("--queue-status", help="queue status timeline (ts, queue, agents_available, estimated_wait_s)")
    bt.add_argument("--engine", choices=("fast", "policy", "processes", "dask"), default="fast",
                    help="fast (vectorised, default) or policy (the runtime's pure core row by row); a history "
                         "partitioned by visitor (--events a folder of part=NNN folders) runs on a process pool "
                         "(processes) or on Dask (dask: a local cluster, or --scheduler)")
    bt.add_argument("--workers", type=_positive_int, help="processes or Dask workers (default: the cores)")
    bt.add_argument("--scheduler", help="with --engine dask: the address of a running Dask scheduler")
    bt.add_argument("--quiet", action="store_true", help="no progress bar")
    bt.set_defaults(run=_backtest)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pcrules", description="Decide when to offer a proactive chat.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a rule spec; list every problem")
    validate.add_argument("file", help="the rule spec to check (YAML; `pcrules init DIR` writes a starting one)")
    validate.set_defaults(run=_validate)
    demo = commands.add_parser("demo", help="replay sample events through the runtime and summarise")
    demo.add_argument("--rules", default=str(DEFAULT_RULES), help="rule spec (default: the embedded default)")
    demo.add_argument("--events", help="events file (default: the shipped sample)")
    demo.add_argument("--log", default="var/demo/decisions.sqlite",
                      help="decision log to write (afresh); the bundle goes beside it in published/")
    demo.add_argument("--no-model", action="store_true", help="skip training: replay with the rules alone")
    demo.set_defaults(run=_demo)
    _add_init_command(commands)
    _add_bundle_commands(commands)
    _add_sample_data_command(commands)
    _add_backtest_command(commands)
    _add_dashboard_command(commands)
    _add_serve_command(commands)
    _add_train_command(commands)
    _add_tuner_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
