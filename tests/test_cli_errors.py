"""Bad input on the command line, for every command of `pcrules --help` (issue 17, "a CLI bad-input test table").

Each row runs the real CLI in a subprocess (`python -m pcrules ...`) on a missing file, a file of the wrong format
(text named .parquet, binary data named .yaml, .csv or .json), a file without the columns it needs, or a value no
option takes, and checks that the command fails (exit status != 0) with ONE line on stderr, ``error: ...`` (or
argparse's ``pcrules CMD: error: ...``), naming the file and/or the option, nothing on stdout and no traceback
anywhere. A remedy it states names a CLI option, never a Python argument.

Ports (a port that cannot exist, a busy port) of serve, dashboard and tuner are in tests/test_cli_ports.py. Every
row here fails before a server would start; a row that did start one would end at the subprocess timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import pcrules
from pcrules.cli import DEFAULT_RULES, build_parser, main

ROOT = Path(pcrules.__file__).resolve().parents[1]
SAMPLE = ROOT / "pcrules" / "data" / "sample_events.csv.gz"
ERROR = re.compile(r"^(pcrules( [a-z-]+)?: )?error: ")
PYTHON_ONLY = ("columns={", "format='", "format=\"", "effects=", "queue_status:", "Map them")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The bad inputs, and a few good ones for the options not under test; names for the table's templates."""
    d = tmp_path_factory.mktemp("bad-input")
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (d / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (d / "binary.json").write_bytes(bytes(range(256)) * 8)
    (d / "text.parquet").write_text("ts,visitor_id\n1,v\n")
    (d / "columns.csv").write_text("a,b,c\n1,2,3\n")
    (d / "list.yaml").write_text("- just\n- a list\n")
    (d / "broken.json").write_text("{\n")
    (d / "a-file").write_text("not a directory\n")
    (d / "empty-dir").mkdir()
    (d / "has-rules").mkdir()
    (d / "has-rules" / "rules.yaml").write_text("name: mine\n")
    (d / "offers.csv").write_text("ts,visitor_id,session_id,page,response\n1764057600,v1,s1,Home,accept\n")
    (d / "queues.csv").write_text("ts,queue,agents_available\n1764057600,Nowhere,3\n")
    published = d / "published"
    done = subprocess.run([sys.executable, "-m", "pcrules", "publish", "--rules", str(DEFAULT_RULES), "--out",
                           str(published)], capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    (version,) = (published / "versions").iterdir()
    with socket.socket() as s:  # a port nobody listens on, should a row start a server after all
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"d": str(d), "pub": str(published), "version": str(version), "sample": str(SAMPLE), "port": str(port),
            "rules": str(DEFAULT_RULES)}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


DEMO = ["demo", "--no-model", "--log", "{d}/demo/decisions.sqlite"]
BACKTEST = ["backtest", "--bundle", "{pub}", "--events", "{sample}", "--quiet"]
TUNER = ["tuner", "--bundle", "{d}/tuner-published", "--port", "{port}"]

# (id, arguments, what the one line must name). {d}: a directory of bad files; {pub}: a publish directory with one
# version; {sample}: the shipped events; {port}: a free port.
CASES = [
    # init
    ("init/dir-is-a-file", ["init", "{d}/a-file"], ["{d}/a-file"]),
    ("init/rules-yaml-exists", ["init", "{d}/has-rules"], ["{d}/has-rules/rules.yaml"]),
    # validate
    ("validate/missing-file", ["validate", "{d}/nope.yaml"], ["{d}/nope.yaml"]),
    ("validate/binary-yaml", ["validate", "{d}/binary.yaml"], ["{d}/binary.yaml"]),
    ("validate/a-directory", ["validate", "{d}/empty-dir"], ["{d}/empty-dir"]),
    ("validate/not-a-mapping", ["validate", "{d}/list.yaml"], ["{d}/list.yaml", "expected a mapping"]),
    ("validate/no-argument", ["validate"], ["file"]),
    # demo
    ("demo/rules-missing", [*DEMO, "--rules", "{d}/nope.yaml"], ["--rules", "{d}/nope.yaml"]),
    ("demo/rules-binary", [*DEMO, "--rules", "{d}/binary.yaml"], ["--rules", "{d}/binary.yaml"]),
    ("demo/events-missing", [*DEMO, "--events", "{d}/nope.csv"], ["--events", "{d}/nope.csv"]),
    ("demo/events-text-as-parquet", [*DEMO, "--events", "{d}/text.parquet"], ["--events", "{d}/text.parquet"]),
    ("demo/events-wrong-columns", [*DEMO, "--events", "{d}/columns.csv"], ["--events", "{d}/columns.csv", "ts"]),
    ("demo/events-binary-csv", [*DEMO, "--events", "{d}/binary.csv"], ["--events", "{d}/binary.csv"]),
    ("demo/log-under-a-file", ["demo", "--no-model", "--log", "{d}/a-file/decisions.sqlite"], ["--log", "a-file"]),
    # sample-data
    ("sample-data/out-is-a-file", ["sample-data", "--out", "{d}/a-file", "--visitors", "5"], ["--out", "{d}/a-file"]),
    ("sample-data/visitors-zero", ["sample-data", "--out", "{d}/world", "--visitors", "0"], ["--visitors"]),
    ("sample-data/unknown-format", ["sample-data", "--out", "{d}/world", "--format", "xlsx"], ["--format", "xlsx"]),
    ("sample-data/bad-start", ["sample-data", "--out", "{d}/world", "--start", "someday"], ["--start", "someday"]),
    # train
    ("train/offers-missing", ["train", "--offers", "{d}/nope.parquet", "--out", "{d}/m.json"],
     ["--offers", "{d}/nope.parquet"]),
    ("train/offers-text-as-parquet", ["train", "--offers", "{d}/text.parquet", "--out", "{d}/m.json"],
     ["--offers", "{d}/text.parquet"]),
    ("train/offers-binary-csv", ["train", "--offers", "{d}/binary.csv", "--out", "{d}/m.json"],
     ["--offers", "{d}/binary.csv"]),
    ("train/offers-wrong-columns", ["train", "--offers", "{d}/columns.csv", "--out", "{d}/m.json"],
     ["--offers", "{d}/columns.csv", "response", "--column"]),
    ("train/offers-unknown-format", ["train", "--offers", "{d}/binary.json", "--out", "{d}/m.json"],
     ["--offers", "{d}/binary.json", "--format", ".parquet", ".csv"]),
    ("train/column-not-a-pair", ["train", "--offers", "{d}/offers.csv", "--out", "{d}/m.json", "--column", "ts"],
     ["--column"]),
    ("train/out-under-a-file", ["train", "--offers", "{d}/offers.csv", "--out", "{d}/a-file/m.json"],
     ["--out", "{d}/a-file/m.json"]),
    ("train/sample-zero", ["train", "--offers", "{d}/offers.csv", "--out", "{d}/m.json", "--sample", "0"],
     ["--sample", "(0, 1]"]),
    ("train/sample-above-one", ["train", "--offers", "{d}/offers.csv", "--out", "{d}/m.json", "--sample", "1.5"],
     ["--sample", "1.5"]),
    ("train/sample-words", ["train", "--offers", "{d}/offers.csv", "--out", "{d}/m.json", "--sample", "half"],
     ["--sample", "auto", "'half'"]),
    ("train/sample-too-few-offers", ["train", "--offers", "{d}/offers.csv", "--out", "{d}/m.json", "--sample",
                                     "auto"], ["--offers", "{d}/offers.csv"]),
    # publish
    ("publish/rules-missing", ["publish", "--rules", "{d}/nope.yaml", "--out", "{d}/p"], ["--rules", "{d}/nope.yaml"]),
    ("publish/rules-binary", ["publish", "--rules", "{d}/binary.yaml", "--out", "{d}/p"],
     ["--rules", "{d}/binary.yaml"]),
    ("publish/model-missing", ["publish", "--rules", "{rules}", "--model", "{d}/nope.json", "--out", "{d}/p"],
     ["{d}/nope.json"]),
    ("publish/model-binary", ["publish", "--rules", "{rules}", "--model", "{d}/binary.json", "--out", "{d}/p"],
     ["{d}/binary.json"]),
    ("publish/metrics-not-json", ["publish", "--rules", "{rules}", "--metrics", "{d}/broken.json", "--out", "{d}/p"],
     ["--metrics", "{d}/broken.json"]),
    ("publish/out-is-a-file", ["publish", "--rules", "{rules}", "--out", "{d}/a-file"], ["--out", "{d}/a-file"]),
    # rollback
    ("rollback/out-missing", ["rollback", "--out", "{d}/nope"], ["{d}/nope"]),
    ("rollback/out-is-a-file", ["rollback", "--out", "{d}/a-file"], ["{d}/a-file"]),
    ("rollback/nothing-to-roll-back-to", ["rollback", "--out", "{pub}"], ["{pub}"]),
    # bundle-info
    ("bundle-info/missing", ["bundle-info", "{d}/nope"], ["{d}/nope"]),
    ("bundle-info/a-file", ["bundle-info", "{d}/a-file"], ["{d}/a-file"]),
    ("bundle-info/not-a-bundle", ["bundle-info", "{d}/empty-dir"], ["{d}/empty-dir"]),
    # backtest
    ("backtest/bundle-missing", ["backtest", "--bundle", "{d}/nope", "--events", "{sample}"], ["--bundle", "{d}/nope"]),
    ("backtest/bundle-is-a-file", ["backtest", "--bundle", "{d}/a-file", "--events", "{sample}"],
     ["--bundle", "{d}/a-file"]),
    ("backtest/events-missing", ["backtest", "--bundle", "{pub}", "--events", "{d}/nope.csv"],
     ["--events", "{d}/nope.csv"]),
    ("backtest/events-text-as-parquet", ["backtest", "--bundle", "{pub}", "--events", "{d}/text.parquet"],
     ["--events", "{d}/text.parquet", "Parquet"]),
    ("backtest/events-binary-csv", ["backtest", "--bundle", "{pub}", "--events", "{d}/binary.csv"],
     ["--events", "{d}/binary.csv"]),
    ("backtest/events-wrong-columns", ["backtest", "--bundle", "{pub}", "--events", "{d}/columns.csv"],
     ["--events", "{d}/columns.csv", "seconds_on_page", "--column"]),
    ("backtest/events-unknown-format", ["backtest", "--bundle", "{pub}", "--events", "{d}/binary.json"],
     ["--events", "{d}/binary.json", "--format"]),
    ("backtest/events-format-not-known", ["backtest", "--bundle", "{pub}", "--events", "{sample}", "--format", "xls"],
     ["--format", "xls"]),
    ("backtest/queue-status-missing", [*BACKTEST, "--queue-status", "{d}/nope.csv"],
     ["--queue-status", "{d}/nope.csv"]),
    ("backtest/queue-status-text-as-parquet", [*BACKTEST, "--queue-status", "{d}/text.parquet"],
     ["--queue-status", "{d}/text.parquet"]),
    ("backtest/queue-status-wrong-columns", [*BACKTEST, "--queue-status", "{d}/columns.csv"],
     ["--queue-status", "{d}/columns.csv", "queue"]),
    ("backtest/queue-status-unknown-queue", [*BACKTEST, "--queue-status", "{d}/queues.csv"],
     ["--queue-status", "{d}/queues.csv", "Nowhere"]),
    ("backtest/out-under-a-file", [*BACKTEST, "--out", "{d}/a-file/decisions.csv"],
     ["--out", "{d}/a-file/decisions.csv"]),
    ("backtest/unknown-engine", [*BACKTEST, "--engine", "turbo"], ["--engine", "turbo"]),
    # serve
    ("serve/rules-missing", ["serve", "--rules", "{d}/nope.yaml", "--port", "{port}"], ["--rules", "{d}/nope.yaml"]),
    ("serve/rules-binary", ["serve", "--rules", "{d}/binary.yaml", "--port", "{port}"],
     ["--rules", "{d}/binary.yaml"]),
    ("serve/rules-not-a-mapping", ["serve", "--rules", "{d}/list.yaml", "--port", "{port}"],
     ["--rules", "{d}/list.yaml"]),
    ("serve/bundle-missing", ["serve", "--bundle", "{d}/nope", "--port", "{port}"], ["--bundle", "{d}/nope"]),
    ("serve/log-under-a-file", ["serve", "--log", "{d}/a-file/decisions.sqlite", "--port", "{port}"],
     ["{d}/a-file/decisions.sqlite"]),
    ("serve/workers-without-redis", ["serve", "--workers", "2", "--port", "{port}"], ["--workers", "--redis"]),
    # dashboard
    ("dashboard/log-not-sqlite", ["dashboard", "--log", "{d}/binary.csv", "--port", "{port}"],
     ["--log", "{d}/binary.csv"]),
    ("dashboard/log-a-directory", ["dashboard", "--log", "{d}/empty-dir", "--port", "{port}"],
     ["--log", "{d}/empty-dir"]),
    ("dashboard/bundle-missing", ["dashboard", "--bundle", "{d}/nope", "--port", "{port}"],
     ["--bundle", "{d}/nope"]),
    ("dashboard/cull-idle-zero", ["dashboard", "--cull-idle", "0", "--port", "{port}"], ["--cull-idle"]),
    # tuner
    ("tuner/events-missing", [*TUNER, "--events", "{d}/nope.csv"], ["--events", "{d}/nope.csv"]),
    ("tuner/events-text-as-parquet", [*TUNER, "--events", "{d}/text.parquet"], ["--events", "{d}/text.parquet"]),
    ("tuner/events-binary-csv", [*TUNER, "--events", "{d}/binary.csv"], ["--events", "{d}/binary.csv"]),
    ("tuner/events-wrong-columns", [*TUNER, "--events", "{d}/columns.csv"],
     ["--events", "{d}/columns.csv", "visitor_id"]),
    ("tuner/events-unknown-format", [*TUNER, "--events", "{d}/binary.json"], ["--events", "{d}/binary.json"]),
    ("tuner/sample-share-zero", [*TUNER, "--sample-share", "0"], ["--sample-share", "(0, 1]"]),
    ("tuner/sample-share-words", [*TUNER, "--sample-share", "most"], ["--sample-share", "'most'"]),
    ("tuner/logging-spec-missing", [*TUNER, "--logging-spec", "{d}/nope.yaml"], ["--logging-spec", "{d}/nope.yaml"]),
    ("tuner/logging-spec-binary", [*TUNER, "--logging-spec", "{d}/binary.yaml"],
     ["--logging-spec", "{d}/binary.yaml"]),
    ("tuner/bundle-is-a-file", ["tuner", "--bundle", "{d}/a-file", "--port", "{port}"], ["--bundle", "{d}/a-file"]),
    ("tuner/bundle-is-one-version", ["tuner", "--bundle", "{version}", "--port", "{port}"], ["--bundle", "{version}"]),
]


def _fill(items: list[str], files: dict[str, str]) -> list[str]:
    return [item.format(**files) for item in items]


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


def _in_process(args: list[str], cwd: str) -> Done:
    """`pcrules ARGS` as `python -m pcrules` runs it (``cli.main``), in this interpreter: the imports are paid once
    for the whole table. An exception escaping main() fails the test with its traceback, as it would print one."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's errors
            code = exc.code if isinstance(exc.code, int) else 1
    return Done(code, out.getvalue(), err.getvalue())


def _subprocess(args: list[str], cwd: str) -> Done:
    done = subprocess.run([sys.executable, "-m", "pcrules", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=_env(), stdin=subprocess.DEVNULL)
    return Done(done.returncode, done.stdout, done.stderr)


def _check(done: Done, words: list[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode != 0, done.stdout
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert ERROR.match(line), line
    missing = [w for w in words if w not in line]
    assert not missing, f"{missing} not in: {line}"
    assert not any(p in line for p in PYTHON_ONLY), line


@pytest.mark.parametrize("args, words", [pytest.param(a, w, id=i) for i, a, w in CASES])
def test_bad_input_is_one_line_naming_the_file_or_option(files, args, words):
    _check(_in_process(_fill(args, files), files["d"]), _fill(words, files))


# The first row of each command again through the real entry point, a fresh interpreter: the same one line.
FIRST = {i.split("/")[0]: (i, a, w) for i, a, w in reversed(CASES)}


@pytest.mark.parametrize("args, words", [pytest.param(a, w, id=i) for i, a, w in FIRST.values()])
def test_the_real_command_says_the_same_in_one_line(files, args, words):
    args = _fill(args, files)
    done = _subprocess(args, files["d"])
    _check(done, _fill(words, files))
    assert done.stderr == _in_process(args, files["d"]).stderr


def test_every_command_has_rows_in_the_table():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    covered = {case_id.split("/")[0] for case_id, _, _ in CASES}
    assert set(commands.choices) - covered == set()
    assert set(commands.choices) >= {"init", "validate", "demo", "sample-data", "train", "publish", "rollback",
                                     "bundle-info", "backtest", "serve", "dashboard", "tuner"}


@pytest.mark.parametrize("command", ["init", "validate", "bundle-info"])
def test_positional_arguments_have_help(command):
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    positionals = [a for a in commands.choices[command]._actions if not a.option_strings]
    assert positionals and all(a.help for a in positionals)


def test_a_ruleset_with_several_problems_lists_them_all_under_one_error_line(files, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("name: x\npolicy: {holdout: 2}\nqueues: {Q: {max_wait_s: -1}}\nrules: []\n")
    done = subprocess.run([sys.executable, "-m", "pcrules", "validate", str(path)], capture_output=True, text=True,
                          timeout=60, env=_env())
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert ERROR.match(lines[0]) and str(path) in lines[0] and f"{len(lines) - 1} problems" in lines[0]
    assert len(lines) >= 3 and all(line.startswith("  - ") for line in lines[1:])
