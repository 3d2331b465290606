"""`pcrules ...`: validate a ruleset, run the demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import resources
from .errors import SpecError

DEFAULT_RULES = resources.default_rules()
# One set of paths, the README's analyst path, notebooks 02/03 (from notebooks/: ../var/...) and `make tuner`:
# everything generated goes under var/ (git ignores it; `make clean` removes it). The demo keeps its own var/demo/.
PUBLISHED = "var/published"  # publish, rollback, bundle-info, tuner


def _validate(args: argparse.Namespace) -> int:
    from .core.spec import load_spec

    try:
        spec = load_spec(Path(args.file))
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
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
        print(exc, file=sys.stderr)
        return 1
    try:
        rows = list(read_events(events))
    except ValueError as exc:
        return _fail(exc)
    log_path = Path(args.log)
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
        return _fail(exc)
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


def _fail(exc: BaseException | str) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


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
                return _fail(f"{args.metrics}: cannot read the metrics JSON ({exc})")
        path = publish(Path(args.rules), Path(args.model) if args.model else None, Path(args.out), metrics,
                       activate=not args.no_activate)
    except (PcrulesError, OSError) as exc:
        return _fail(exc)
    print(f"published {path.name}: {path}" + ("" if args.no_activate else f" (now current in {args.out})"))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from .bundle import rollback
    from .errors import PcrulesError

    try:
        result = rollback(Path(args.out))
    except (PcrulesError, OSError) as exc:
        return _fail(exc)
    print(f"rolled back: current is now {result.version} (was {result.previous}): {result.path}")
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
    m = b.manifest
    print(f"bundle {b.version} at {b.path}: verified")
    print(f"  created {m['created']}; ruleset {b.spec.name!r} version {b.spec.version}; "
          f"model {(m.get('model') or {}).get('kind', 'none')}")
    print(f"  libraries: {', '.join(f'{k} {v}' for k, v in m['libraries'].items())}")
    if m.get("metrics"):
        print(f"  metrics: {_json_brief(m['metrics'])}")
    return 0


def _json_brief(value: object, limit: int = 300) -> str:
    import json

    text = json.dumps(value, sort_keys=True)
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
    try:
        world = generate(visitors=args.visitors, seed=args.seed, start=args.start, days=args.days,
                         progress=sys.stderr.isatty() and not args.quiet)
        paths = world.write(Path(args.out), format=args.format)
    except ImportError as exc:  # Parquet without pyarrow
        print(f"error: cannot write {args.format} ({exc}); try --format csv.gz", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"pcrules sample-data: {args.visitors:,} visitors, seed {args.seed}, {args.days} day(s) from {args.start}")
    print(world.summary())
    for name, path in paths.items():
        print(f"{name:<11} {path}  ({path.stat().st_size / 1e6:.2f} MB)")
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
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(run=_sample_data)


def _train(args: argparse.Namespace) -> int:
    from .analysis.history import HistoryError, load_offers
    from .scoring.training import train_on_offers, write_model

    try:
        offers, report = load_offers(args.offers)
    except (HistoryError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.problems:
        print(report, file=sys.stderr)
    try:
        result = train_on_offers(offers, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_model(result, args.out, args.metrics_out)
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


def _add_train_command(commands: Any) -> None:
    train = commands.add_parser("train", help="train the acceptance model on past offers; write a model file")
    train.add_argument("--offers", required=True, help="offers table (Parquet or CSV, see data/README.md)")
    train.add_argument("--out", required=True, help="model file to write (JSON; publish it with `pcrules publish`)")
    train.add_argument("--metrics-out", help="held-out metrics to write (JSON; `publish --metrics` takes it)")
    train.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
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
    busy = _busy(args.host, args.port)
    if busy:  # one line, before the banner (uvicorn would print it all, then fail)
        return _fail(busy)
    return serve_main(args)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    srv = commands.add_parser("serve", help="run the HTTP server (observe / answer / queues / metrics), "
                                            "optionally with the demo site")
    source = srv.add_mutually_exclusive_group()
    source.add_argument("--bundle", help="serve a published bundle (publish dir, its current, or a version dir)")
    source.add_argument("--rules", help="serve a rule spec YAML (default: the embedded one; with --demo the demo's)")
    srv.add_argument("--demo", action="store_true", help="also serve the demo site, Pega stand-in and CSR console")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8765, help="port (default 8765)")
    srv.add_argument("--redis", metavar="URL", help="share state between workers in Redis (redis://host:port/db)")
    srv.add_argument("--log", metavar="PATH", help="SQLite decision log to append to (default: none)")
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
    busy = _busy(args.host, args.port)
    if busy:  # Voila would move to the next port while we print this one
        return _fail(busy)
    try:
        return serve(Path(args.log), port=args.port, host=args.host, bundle_path=args.bundle,
                     base_url=args.base_url, cull_idle_s=args.cull_idle)
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)


def _add_voila_options(parser: argparse.ArgumentParser, *, port: int, prefix: str) -> None:
    """What every Voila app the CLI serves takes: where it listens, behind which prefix, when idle kernels go."""
    parser.add_argument("--port", type=_port, default=port, help=f"port (default {port})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; there is no login)")
    parser.add_argument("--base-url", default="/", help=f"URL prefix behind a proxy, e.g. {prefix} (default /)")
    parser.add_argument("--cull-idle", type=_positive_int, default=600,
                        help="shut down a page's kernel after this many idle seconds without a browser (default 600)")


def _add_dashboard_command(commands: argparse._SubParsersAction) -> None:
    dash = commands.add_parser("dashboard", help="serve the Voila ops dashboard on a decision log (127.0.0.1)")
    dash.add_argument("--log", default="var/demo/decisions.sqlite", help="decision log (default: the demo's)")
    dash.add_argument("--bundle", help="publish directory or bundle to show as the live bundle (default: none)")
    _add_voila_options(dash, port=8866, prefix="/ops/")
    dash.set_defaults(run=_dashboard)


# --------------------------------------------------------------------------- tuner: the Voila trigger tuner


def _tuner(args: argparse.Namespace) -> int:
    try:
        from .analysis.tuner import BUNDLE_ENV, EVENTS_ENV
        from .analysis.tuner_app import LOGGING_SPEC_ENV
        from .ops.voila import app_env, serve_app
    except ImportError as exc:  # numpy / pandas, voila / ipywidgets: the `analysis` and `dashboard` extras
        return _fail(f"the tuner needs pcrules[analysis,dashboard] (pandas, voila, ipywidgets): {exc}")
    from .bundle import current_version, load_bundle
    from .core.spec import load_spec
    from .errors import PcrulesError

    events = Path(args.events) if args.events else resources.sample_events()
    if not events.exists():
        return _fail(f"--events {events}: no such events file or history folder")
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
        return _fail(f"--logging-spec {exc}")
    except (PcrulesError, OSError) as exc:
        return _fail(exc)
    if not (bundle.is_dir() and current_version(bundle) is not None):
        print(f"note: no bundle in {bundle} yet: the tuner starts from the embedded default rules without a model, "
              f"and Publish writes the first version there", file=sys.stderr)
    if not _loopback(args.host):
        print(f"warning: serving on {args.host}: the tuner has no login, and its Publish button makes a bundle live",
              file=sys.stderr)
    busy = _busy(args.host, args.port)
    if busy:  # Voila would move to the next port while we print this one
        return _fail(busy)
    env = app_env({EVENTS_ENV: events, BUNDLE_ENV: bundle, LOGGING_SPEC_ENV: args.logging_spec})
    try:
        return serve_app(resources.triggers_notebook(), env, port=args.port, host=args.host, base_url=args.base_url,
                         cull_idle_s=args.cull_idle,
                         banner=f"trigger tuner: {{url}}  (history {events.absolute()}, bundle {bundle.absolute()}; "
                                f"Ctrl-C stops)")
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    from .analysis.history import load_events
    from .bundle import load_bundle
    from .errors import PcrulesError

    try:
        bundle = load_bundle(Path(args.bundle))
        events, report = load_events(Path(args.events))
        status = None
        if args.queue_status:
            path = Path(args.queue_status)
            status = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        result = backtest(bundle.spec, events, bundle.scorer, queue_status=status, engine=args.engine,
                          progress=sys.stderr.isatty() and not args.quiet)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            frame = events[["ts", "visitor_id", "session_id", "page", "seconds_on_page"]].join(result.decisions)
            if out.suffix == ".parquet":
                frame.to_parquet(out, index=False)
            else:
                frame.to_csv(out, index=False)
    except (PcrulesError, OSError, ValueError) as exc:
        return _fail(exc)
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


def _add_backtest_command(commands: argparse._SubParsersAction) -> None:
    bt = commands.add_parser("backtest", help="what a bundle's ruleset and model would have decided on recorded events")
    bt.add_argument("--bundle", required=True, help="bundle: publish dir, <dir>/current or a version dir")
    bt.add_argument("--events", required=True, help="events file (CSV, .csv.gz or Parquet; data/README.md schema)")
    bt.add_argument("--out", help="write the per-event decisions (.parquet, else CSV)")
    bt.add_argument("--queue-status", help="queue status timeline (ts, queue, agents_available, estimated_wait_s)")
    bt.add_argument("--engine", choices=("fast", "policy"), default="fast",
                    help="fast (vectorised, default) or policy (the runtime's pure core row by row)")
    bt.add_argument("--quiet", action="store_true", help="no progress bar")
    bt.set_defaults(run=_backtest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcrules", description="Decide when to offer a proactive chat.")
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
