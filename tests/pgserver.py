"""A throw-away PostgreSQL server for the tests: ``PostgresServer`` and the session fixture ``postgres_server``.

``postgres_server.new_database(name)`` creates an empty database (dropped first if a test made it before) and
returns its ``postgresql://`` URL; ``postgres_server.url`` is the admin database's. Tests that stop, kill or
restart PostgreSQL start a ``PostgresServer()`` of their own (``with PostgresServer() as pg:``; ``pg.stop()``,
``pg.start()`` again on the same data directory and port).

Debian's binaries (``apt-get install postgresql``, which .ci/run does when no ``initdb`` is found) live in
``/usr/lib/postgresql/<version>/bin``, off the PATH; ``$PCRULES_PG_BIN`` names another directory. PostgreSQL
refuses to run as root, so under root the cluster is created and run as the ``postgres`` OS user (the Debian
package makes it; an unprivileged ``pcrules-pg`` user is created when it is missing). The server listens on
127.0.0.1 on a free port and on a unix socket in its own temporary directory, trusts every local connection
(a throw-away cluster reachable only from this machine) and runs with ``fsync=off``: a killed postgres loses
nothing it committed, only a machine crash would.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pcrules.server._procs import free_port

__all__ = ["PostgresServer", "postgres_server", "pg_bin_dir"]


def pg_bin_dir() -> Path | None:
    """The directory holding initdb and postgres: $PCRULES_PG_BIN, the newest Debian one, or the PATH's."""
    explicit = os.environ.get("PCRULES_PG_BIN")
    if explicit:
        return Path(explicit)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _os_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pcrules-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "pcrules-pg"], check=True, capture_output=True)
    return pwd.getpwnam("pcrules-pg")


class PostgresServer:
    """initdb in a temporary directory, then ``postgres`` on a free loopback port; stop() / start() keep the data."""

    def __init__(self, port: int | None = None, bin_dir: Path | None = None):
        self.bin_dir = bin_dir or pg_bin_dir()
        if self.bin_dir is None or not (self.bin_dir / "initdb").exists():
            raise FileNotFoundError(
                "PostgreSQL's initdb was not found under /usr/lib/postgresql/*/bin nor on the PATH: "
                "apt-get install -y postgresql (.ci/run does), or set PCRULES_PG_BIN")
        self.port = port or free_port()
        self.user = _os_user()
        self.dir = Path(tempfile.mkdtemp(prefix="pcrules-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.proc: subprocess.Popen[bytes] | None = None
        self._initialised = False
        self._log = self.dir / "postgres.log"

    # ----------------------------------------------------------------------------------------- process

    def _run_as(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=str(self.dir))
        return env

    def _initdb(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            for path in (self.dir, self.socket_dir):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        subprocess.run([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-locale", "--no-sync"],
                       check=True, capture_output=True, env=self._env(), cwd=self.dir, **self._run_as())
        self._initialised = True

    @property
    def url(self) -> str:
        """The admin database (``postgres``) as the superuser."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if not self._initialised:
            self._initdb()
        out = open(self._log, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
                stdout=out, stderr=subprocess.STDOUT, env=self._env(), cwd=self.dir, **self._run_as())
        finally:
            out.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:  # not listening yet, or "the database system is starting up"
                last = exc
                time.sleep(0.05)
        raise TimeoutError(f"postgres did not accept connections within {timeout} s ({last}): {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, mode: str = "fast") -> None:
        """Stop postgres: ``fast`` (SIGINT: roll back open transactions, close connections) or ``immediate``
        (SIGQUIT: like a crash; committed data survives)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal({"fast": signal.SIGINT, "smart": signal.SIGTERM, "immediate": signal.SIGQUIT}[mode])
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop("immediate")  # its data goes with it: no shutdown checkpoint to wait for
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------------------------------- databases

    def new_database(self, name: str) -> str:
        """An empty database called `name` (lower case, other characters as ``_``; dropped first if it exists),
        as a ``postgresql://`` URL."""
        import psycopg
        from psycopg import sql

        db = re.sub(r"[^a-z0-9_]", "_", name.lower())[:60] or "db"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        return self.database_url(db)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (fails, never skips, without one: .ci/run installs it).

    ``postgres_server.new_database("test_x")`` gives each test module a database of its own. Tests that stop or
    kill PostgreSQL start their own ``PostgresServer``."""
    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server
