"""Start and stop a redis-server and `pcrules serve` processes on free loopback ports (tests, benchmarks).

Nothing here is used by the server itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["free_port", "RedisServer", "PERSISTENT", "VOLATILE", "ServeProcess", "REDIS_SERVER", "wait_http"]

REDIS_SERVER = os.environ.get("PCRULES_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen | None, sig: int) -> None:
    """Send `sig` to a running process, wait up to 10 s, then kill it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s ({last})")


# What pcrules serve accepts by default (RedisStore.check_persistence): an append-only file synced every second.
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")
VOLATILE = ("--appendonly", "no", "--save", "")


class RedisServer:
    """A throw-away redis-server on a free port, loopback only; stop() / start() again on the same data directory.

    `persistence`: redis-server options, by default an append-only file synced every second (PERSISTENT; a
    restart keeps the data); VOLATILE keeps nothing."""

    def __init__(self, port: int | None = None, executable: str = REDIS_SERVER,
                 persistence: Sequence[str] = PERSISTENT):
        if not Path(executable).exists() and shutil.which(executable) is None:
            raise FileNotFoundError(
                f"redis-server not found at {executable}: install Debian's redis-server "
                f"(apt-get install -y redis-server; .ci/run does) or set PCRULES_REDIS_SERVER")
        self.executable = executable
        self.persistence = list(persistence)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.mkdtemp(prefix="pcrules-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", *self.persistence,
             "--dir", self._dir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class ServeProcess:
    """`python -m pcrules serve ...` on a free port, with PYTHONPATH pointing at this checkout.

    `operator_token` goes to the server as $PCRULES_OPERATOR_TOKEN (`.auth` is then the header that carries it);
    `config`, a dict of ServerConfig fields, as $PCRULES_SERVER_CONFIG (e.g. {"address_rate": None} for a load
    test from one loopback address).
    """

    def __init__(self, args: Sequence[str] = (), port: int | None = None, env: dict | None = None,
                 python: str = sys.executable, log_file: str | os.PathLike | None = None,
                 operator_token: str | None = None, config: dict | None = None):
        self.port = port or free_port()
        self.args = list(args)
        self.python = python
        self.env = {**os.environ, **(env or {})}
        self.operator_token = operator_token
        if operator_token is not None:
            self.env["PCRULES_OPERATOR_TOKEN"] = operator_token
        if config is not None:
            self.env["PCRULES_SERVER_CONFIG"] = json.dumps(config)
        path = self.env.get("PYTHONPATH", "")
        self.env["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + path if path else "")
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict:
        """The operator routes' header (empty without a token)."""
        return {"Authorization": f"Bearer {self.operator_token}"} if self.operator_token else {}

    def start(self, timeout: float = 30.0) -> ServeProcess:
        self._out = open(self.log_file, "ab") if self.log_file else None
        self.proc = subprocess.Popen([self.python, "-m", "pcrules", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port), *self.args],
                                     env=self.env, stdout=self._out if self._out is not None else subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        wait_http(self.url + "/healthz", timeout, self.proc)
        return self

    def signal(self, sig: int = signal.SIGHUP) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # uvicorn's Ctrl-C: a graceful shutdown that closes the decision log
        self.proc = None
        if self._out is not None:
            self._out.close()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
