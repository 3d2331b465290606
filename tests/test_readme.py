"""The README's analyst path runs as written (issue 17): its shell block, line by line, in a fresh directory.

Each ``pcrules ...`` line of the block under "From history to a published ruleset" runs as
``python -m pcrules ...`` (this interpreter) in a temporary directory that holds only ``data/`` (a link to the
checkout's, as in a fresh clone), with fewer visitors than the README's; every line must exit 0 without a
traceback. The paths it uses are the ones the CLI defaults to and the notebooks read.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ANALYST_HEADING = "## From history to a published ruleset"
VISITORS = 2000  # the README says 20,000; the same commands on a smaller world


def _section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def analyst_commands() -> list[list[str]]:
    """The argument lists of the analyst path's first ``sh`` block, comments removed."""
    block = re.search(r"```sh\n(.*?)```", _section(ANALYST_HEADING), re.S)
    assert block, f"README.md: no ```sh block under {ANALYST_HEADING!r}"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def _smaller(args: list[str]) -> list[str]:
    out = list(args)
    if "--visitors" in out:
        out[out.index("--visitors") + 1] = str(VISITORS)
    return out


def test_the_analyst_path_block_is_pcrules_commands_from_init_on() -> None:
    commands = analyst_commands()
    assert len(commands) >= 6
    assert all(c[0] == "pcrules" for c in commands), [c for c in commands if c[0] != "pcrules"]
    assert commands[0][:2] == ["pcrules", "init"], "the path starts from a ruleset the reader has"
    text = " ".join(" ".join(c) for c in commands)
    assert "EVENTS" not in text and " rules.yaml" not in text  # no placeholder, no file a fresh clone lacks


@pytest.mark.slow  # ten commands, each a fresh interpreter
def test_the_analyst_path_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    for args in analyst_commands():
        cmd = [sys.executable, "-m", "pcrules", *_smaller(args)[1:]]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        shown = " ".join(args)
        assert done.returncode == 0, f"{shown}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stdout + done.stderr, f"{shown}:\n{done.stderr[-3000:]}"
    assert (tmp_path / "var" / "published" / "current").is_symlink()


def test_init_writes_the_commented_default_and_never_overwrites(tmp_path: Path) -> None:
    from pcrules import resources
    from pcrules.cli import main
    from pcrules.core.spec import load_spec

    target = tmp_path / "new" / "rules.yaml"
    assert main(["init", str(tmp_path / "new")]) == 0
    text = target.read_text(encoding="utf-8")
    assert text.endswith(resources.default_rules().read_text(encoding="utf-8"))
    assert text.startswith("#") and "pcrules validate" in text
    assert load_spec(target) == load_spec(resources.default_rules())
    target.write_text("mine\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pcrules", "init", str(tmp_path / "new")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1 and "exists" in done.stderr
    assert target.read_text(encoding="utf-8") == "mine\n"


def test_one_set_of_paths_readme_cli_notebooks() -> None:
    from pcrules.cli import PUBLISHED, build_parser

    parser = build_parser()
    assert parser.parse_args(["publish", "--rules", "r.yaml"]).out == PUBLISHED
    assert parser.parse_args(["rollback"]).out == PUBLISHED
    assert parser.parse_args(["bundle-info"]).path == PUBLISHED
    assert parser.parse_args(["tuner"]).bundle == PUBLISHED
    analyst = _section(ANALYST_HEADING)
    assert f"--out {PUBLISHED}" in analyst and f"--bundle {PUBLISHED}" in analyst
    params = {}
    for name in ("02_train_model", "03_tune_triggers"):
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        exec("".join(cell["source"]), {}, params)
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), name
    assert params["bundle_path"] == f"../{PUBLISHED}"
    assert params["model_path"] == "../var/model.json" and "--out var/model.json" in analyst
    assert (ROOT / params["data_path"].removeprefix("../")).exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/demo/", "http://127.0.0.1:8866/", "http://127.0.0.1:8867/"])
def test_quick_start_names_what_make_demo_serves(url: str) -> None:
    assert url in _section("## Quick start")


def test_the_fleet_commands_are_commands_the_cli_takes() -> None:
    """The "Running a fleet" block cannot run here (other hosts), but every line is a command and options that
    `pcrules` accepts as written."""
    from pcrules.cli import build_parser

    block = re.search(r"```sh\n(.*?)```", _section("## Running a fleet"), re.S)
    assert block, "README.md: no ```sh block under '## Running a fleet'"
    lines = [shlex.split(line, comments=True) for line in block.group(1).replace("\\\n", " ").splitlines()]
    commands = [line for line in lines if line]
    assert [c[:2] for c in commands] == [["pcrules", "serve"], ["pcrules", "dashboard"], ["pcrules", "tuner"],
                                         ["pcrules", "train"]]
    parser = build_parser()
    for command in commands:
        parser.parse_args(command[1:])  # argparse exits (SystemExit) on an option the CLI does not take
