"""Ports on the command line: a port that cannot exist is refused by argparse; a busy one is one line, before any
banner, for the server and the dashboard alike (issue 17, item 4)."""

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


@pytest.mark.parametrize("command", [["serve"], ["dashboard", "--log", "missing.sqlite"]])
@pytest.mark.parametrize("port", ["0", "99999", "http"])
def test_a_port_that_cannot_exist_is_refused(command, port):
    done = run(*command, "--port", port)
    assert done.returncode == 2 and "argument --port" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["serve"], ["dashboard", "--log", "missing.sqlite"]])
def test_a_busy_port_is_one_line_before_any_banner(command, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(*command, "--port", str(port))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
