"""Ports on the command line: a port that cannot exist is refused by argparse; a busy one is one line, before any
banner, for the server, the dashboard and the tuner alike (issue 17, item 4). tests/test_cli_errors.py has every
other bad input of every command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import pcrules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pcrules.__file__)))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcrules", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


# Every command that listens: the server, the ops dashboard, the tuner (on the shipped sample, no bundle yet).
SERVERS = {"serve": ["serve"], "dashboard": ["dashboard", "--log", "missing.sqlite"],
           "tuner": ["tuner", "--bundle", "missing-publish-dir"]}


def one_line(done: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints on stderr (nothing on stdout, no traceback)."""
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", SERVERS.values(), ids=SERVERS.keys())
@pytest.mark.parametrize("port", ["0", "99999", "http"])
def test_a_port_that_cannot_exist_is_refused(command, port):
    done = run(*command, "--port", port)
    line = one_line(done)
    assert done.returncode == 2 and "argument --port" in line and port in line
    assert line.startswith(f"pcrules {command[0]}: error: ")


@pytest.mark.parametrize("command", SERVERS.values(), ids=SERVERS.keys())
def test_a_busy_port_is_one_line_before_any_banner(command, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(*command, "--port", str(port))
    assert done.returncode == 1
    assert one_line(done) == (f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
                              f"(choose another with --port)")
