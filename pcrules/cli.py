"""`pcrules ...`: validate a ruleset, run the demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SpecError

DEFAULT_RULES = Path(__file__).resolve().parent / "default_rules.yaml"


def _validate(args: argparse.Namespace) -> int:
    from .spec import load_spec

    try:
        spec = load_spec(Path(args.file))
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ok: {args.file}: ruleset {spec.name!r} version {spec.version}, "
          f"{len(spec.rules)} rule(s), {len(spec.queues)} queue(s)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .decision_log import SQLiteDecisionLog
    from .replay import replay
    from .runtime import Runtime
    from .sample import SAMPLE_PATH, read_events
    from .spec import load_spec

    events = Path(args.events) if args.events else SAMPLE_PATH
    try:
        spec = load_spec(Path(args.rules))
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    log_path = Path(args.log)
    if log_path.exists() and not args.append:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{log_path}{suffix}").unlink(missing_ok=True)
    rows = list(read_events(events))
    with Runtime(spec, log=SQLiteDecisionLog(log_path)) as runtime:
        summary = replay(runtime, rows, progress=sys.stderr.isatty(), total=len(rows))
    print(f"pcrules demo: ruleset {spec.name!r} ({spec.version}) over {events}")
    print(summary.report())
    print(f"decision log: {log_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcrules", description="Decide when to offer a proactive chat.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a rule spec; list every problem")
    validate.add_argument("file")
    validate.set_defaults(run=_validate)
    demo = commands.add_parser("demo", help="replay sample events through the runtime and summarise")
    demo.add_argument("--rules", default=str(DEFAULT_RULES), help="rule spec (default: the embedded default)")
    demo.add_argument("--events", help="events file (default: the shipped sample)")
    demo.add_argument("--log", default="var/demo/decisions.sqlite", help="decision log to write")
    demo.add_argument("--append", action="store_true", help="append to an existing log instead of starting afresh")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
