"""A throw-away Redis Cluster on this machine: 3 masters, a replica each, loopback only, started by the tests.

``redis_cluster`` (session-scoped, registered in conftest.py) is shared by the tests that only need *a* cluster
(each uses a key prefix of its own); a test that fails a master over starts its own ``LocalCluster``.

Each node is ``redis-server --cluster-enabled yes`` with an append-only file synced every second, a node timeout
of ``node_timeout_ms`` (a master that stops answering for that long is replaced by its replica) and
``cluster-replica-validity-factor 0`` (a replica may always take over), ``cluster-require-full-coverage no``
(while one master's slots move the others keep serving theirs: what the README advises), DEBUG allowed from
loopback (``DEBUG SLEEP`` stalls a master); ``redis-cli --cluster create ...
--cluster-replicas 1`` joins them. Ports are free ports whose cluster bus port (+10000) is free too.
"""

from __future__ import annotations

import math
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pcrules.server._procs import REDIS_SERVER

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _free_cluster_port(taken: set[int]) -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


def _cli(port: int, *args: str, timeout: float = 10) -> str:
    return subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True,
                          timeout=timeout).stdout


class LocalCluster:
    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        for exe in (REDIS_SERVER, REDIS_CLI):
            if not Path(exe).exists() and shutil.which(exe) is None:
                pytest.fail(f"{exe} is needed for the cluster tests: apt-get install -y redis-server", pytrace=False)
        taken: set[int] = set()
        self.ports: list[int] = []
        for _ in range(masters * (1 + replicas)):
            port = _free_cluster_port(taken)
            taken |= {port, port + 10000}
            self.ports.append(port)
        self.masters, self.replicas, self.node_timeout_ms = masters, replicas, node_timeout_ms
        self.procs: dict[int, subprocess.Popen] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="pcrules-cluster-"))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:self.masters])

    def start_node(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             "--cluster-replica-validity-factor", "0", "--cluster-require-full-coverage", "no",
             "--enable-debug-command", "local", "--appendonly", "yes", "--appendfsync", "everysec",
             "--appendfilename", f"aof-{port}.aof", "--appenddirname", f"aof-{port}", "--dbfilename",
             f"dump-{port}.rdb", "--save", "", "--dir", str(self._dir), "--daemonize", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while "PONG" not in _cli(port, "PING"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start")
            time.sleep(0.02)

    def start(self) -> LocalCluster:
        for port in self.ports:
            self.start_node(port)
        out = subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                              "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if "[OK] All 16384 slots covered" not in out.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 20) -> None:
        """Until every node says cluster_state:ok and every replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in self.ports if self.procs.get(p) is not None and self.procs[p].poll() is None]
            infos = {p: _cli(p, "CLUSTER", "INFO") for p in alive}
            repl = {p: _cli(p, "INFO", "replication") for p in alive}
            ok = all("cluster_state:ok" in info for info in infos.values())
            synced = all("master_link_status:up" in r for r in repl.values() if "role:slave" in r)
            if ok and synced:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle: {infos}")
            time.sleep(0.1)

    def role(self, port: int) -> str:
        return "master" if "role:master" in _cli(port, "INFO", "replication") else "replica"

    def master_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot` now."""
        for port in self.ports:
            if self.procs.get(port) is None or self.procs[port].poll() is not None:
                continue
            for line in _cli(port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "master" in fields[2] and "fail" not in fields[2]:
                    for part in fields[8:]:
                        lo, _, hi = part.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            return int(fields[1].split(":")[1].split("@")[0])
            break
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master_port: int) -> int:
        for port in self.ports:
            if port != master_port and f"master_port:{master_port}" in _cli(port, "INFO", "replication"):
                return port
        raise RuntimeError(f"no replica of {master_port}")

    def client(self, port: int) -> Any:
        import redis

        return redis.Redis(port=port, decode_responses=True)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster with a replica per master, for the session (fails, never skips, without
    redis-server)."""
    with LocalCluster() as cluster:
        yield cluster


class LocalSentinel:
    """One master, one replica and one Sentinel watching them as ``mymaster`` (quorum 1, down after 1 s)."""

    def __init__(self) -> None:
        taken: set[int] = set()
        self.master, self.replica, self.sentinel = (_free_cluster_port(taken) for _ in range(3))
        self.procs: list[subprocess.Popen] = []
        self._dir = Path(tempfile.mkdtemp(prefix="pcrules-sentinel-"))

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel}/mymaster"

    def _run(self, *args: str) -> None:
        self.procs.append(subprocess.Popen([REDIS_SERVER, *args], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, cwd=self._dir))

    def start(self) -> LocalSentinel:
        common = ["--bind", "127.0.0.1", "--appendonly", "yes", "--save", "", "--daemonize", "no"]
        self._run("--port", str(self.master), "--dir", str(self._dir / "m"), *common)
        self._run("--port", str(self.replica), "--dir", str(self._dir / "r"), "--replicaof", "127.0.0.1",
                  str(self.master), *common)
        config = self._dir / "sentinel.conf"
        config.write_text(f"port {self.sentinel}\nbind 127.0.0.1\ndir {self._dir}\n"
                          f"sentinel monitor mymaster 127.0.0.1 {self.master} 1\n"
                          f"sentinel down-after-milliseconds mymaster 1000\n"
                          f"sentinel failover-timeout mymaster 3000\n")
        self._run(str(config), "--sentinel")
        deadline = time.monotonic() + 15
        while not ("master_link_status:up" in _cli(self.replica, "INFO", "replication")
                   and "slaves=1" in _cli(self.sentinel, "INFO", "sentinel")):
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel set-up did not settle")
            time.sleep(0.1)
        return self

    def failover(self, timeout: float = 15) -> None:
        """SENTINEL FAILOVER, until the replica is the master. Asked again every 2 s: a Sentinel that has not yet
        seen the replica as good (on a busy machine its INFO is a few seconds old) refuses (NOGOODSLAVE)."""
        deadline = time.monotonic() + timeout
        asked = -math.inf
        while "role:master" not in _cli(self.replica, "INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel did not fail over")
            if time.monotonic() - asked > 2.0:
                _cli(self.sentinel, "SENTINEL", "FAILOVER", "mymaster")
                asked = time.monotonic()
            time.sleep(0.05)

    def __enter__(self) -> LocalSentinel:
        for sub in ("m", "r"):
            (self._dir / sub).mkdir()
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
