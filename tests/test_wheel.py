"""The wheel works away from the repository: built from this checkout, installed into a fresh virtual environment
outside it (no system site-packages, no PYTHONPATH), and run from a working directory outside it.

* every :mod:`pcrules.resources` file is found inside the installed package;
* ``pcrules demo --no-model`` replays the shipped sample into a decision log;
* ``pcrules serve --demo`` answers ``/healthz``, ``/demo/`` and ``/static/pcrules.js``, then stops on SIGTERM;
* ``pcrules dashboard`` (with the ``dashboard`` extra) serves the ops notebook through its template, and the
  notebook runs in a kernel.

The build runs on a copy of what it reads (``pyproject.toml``, ``README.md``, ``pcrules/``): setuptools writes
``build/`` and ``*.egg-info`` beside its sources, and a stale ``build/lib`` would leak deleted files into later
wheels. Dependencies come from the package index (pip's cache makes repeated runs quick), pinned to the versions
installed here, so the wheel is tried with what the rest of the suite ran with. About a minute with a warm cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ("default_rules", "demo_rules", "sample_events", "online_shoppers", "dashboards_dir", "ops_notebook",
             "triggers_notebook", "voila_json", "jupyter_data_dir")


def _run(cmd: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    assert run.returncode == 0, f"{' '.join(map(str, cmd))} exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    return run


def _clean_env(venv: Path) -> dict[str, str]:
    """This environment without anything that would let the venv's Python see the checkout or another venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")
           and not k.startswith("PCRULES_")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _pins(path: Path) -> Path:
    """Constraints: the versions installed in the environment running this test (pcrules itself excluded)."""
    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                   if d.metadata["Name"] and d.metadata["Name"].lower() != "pcrules"})
    path.write_text("\n".join(pins) + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait(url: str, proc: subprocess.Popen[bytes], output: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode} before answering {url}:\n"
                                 f"{output.read_text(errors='replace')}")
        try:
            _get(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"nothing answered at {url} within {timeout:.0f} s")


def _start(cmd: list[str], installed: Installed, output: Path) -> subprocess.Popen[bytes]:
    """A server in its own session, its output to a file (a pipe could stay open in a grandchild)."""
    with open(output, "wb") as out:
        return subprocess.Popen(cmd, cwd=installed.work, env=installed.env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], output: Path) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
            proc.wait(10)
    return output.read_text(errors="replace")


class Installed:
    def __init__(self, base: Path, venv: Path, wheel: Path, pins: Path):
        self.base, self.venv, self.wheel, self.pins = base, venv, wheel, pins
        self.python = venv / "bin" / "python"
        self.pcrules = venv / "bin" / "pcrules"
        self.env = _clean_env(venv)
        self.work = base / "work"  # the working directory of every command: outside the checkout
        self.work.mkdir()

    def pip_install(self, requirement: str, timeout: float = 240) -> None:
        _run([str(self.python), "-m", "pip", "install", "--quiet", "-c", str(self.pins), requirement],
             timeout=timeout, cwd=self.work, env=self.env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT), "the venv must live outside the checkout"
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "pcrules", src / "pcrules",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(src)], timeout=300,
         cwd=base)
    (wheel,) = dist.glob("pcrules-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120, cwd=base)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    inst = Installed(base, venv, wheel, _pins(base / "pins.txt"))
    inst.pip_install(f"{wheel}[server]")
    return inst


def test_the_package_and_its_files_come_from_the_installed_wheel(installed: Installed) -> None:
    code = ("import json, pcrules, pcrules.resources as r; "
            f"print(json.dumps({{'package': pcrules.__file__, **{{n: str(getattr(r, n)()) for n in {RESOURCES!r}}}}}))")
    paths = json.loads(_run([str(installed.python), "-c", code], timeout=60, cwd=installed.work,
                            env=installed.env).stdout)
    site = Path(paths.pop("package")).resolve().parent
    assert site.is_relative_to(installed.venv.resolve()), site
    for name, path in paths.items():
        p = Path(path)
        assert p.resolve().is_relative_to(site), (name, path)
        assert p.is_dir() if name.endswith("_dir") else p.is_file(), (name, path)
        assert not p.resolve().is_relative_to(ROOT), (name, path)
    assert (Path(paths["jupyter_data_dir"]) / "voila" / "templates" / "pcrules-ops" / "index.html.j2").is_file()
    assert (Path(paths["online_shoppers"]).parent / "README.md").is_file()  # the data set's licence travels with it


def test_demo_without_a_model_replays_the_shipped_sample(installed: Installed) -> None:
    log = installed.work / "var" / "demo.sqlite"
    run = _run([str(installed.pcrules), "demo", "--no-model", "--log", str(log)], timeout=180, cwd=installed.work,
               env=installed.env)
    assert "events replayed" in run.stdout and "offers by rule" in run.stdout, run.stdout
    assert str(installed.venv) in run.stdout  # the sample read is the installed package's
    assert log.is_file()


def test_serve_demo_answers_and_stops(installed: Installed) -> None:
    port = _free_port()
    log = installed.work / "var" / "serve.sqlite"
    output = installed.base / "serve.out"
    proc = _start([str(installed.pcrules), "serve", "--demo", "--port", str(port), "--log", str(log)], installed,
                  output)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(f"{url}/healthz", proc, output, timeout=60)
        status, body = _get(f"{url}/healthz")
        assert status == 200, body
        status, body = _get(f"{url}/demo/")
        assert status == 200 and b"<html" in body.lower(), body[:300]
        status, body = _get(f"{url}/static/pcrules.js")
        assert status == 200 and body, body[:300]
    finally:
        out = _stop(proc, output)
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert str(installed.venv) in out  # the demo ruleset read is the installed package's


@pytest.mark.notebook
def test_dashboard_serves_the_ops_notebook(installed: Installed) -> None:
    installed.pip_install(f"{installed.wheel}[dashboard]")
    log = installed.work / "var" / "demo.sqlite"  # the demo test's log, or missing: the dashboard says so
    port = _free_port()
    output = installed.base / "dashboard.out"
    proc = _start([str(installed.pcrules), "dashboard", "--log", str(log), "--port", str(port)], installed, output)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait(f"{url}voila/static/voila.js", proc, output, timeout=90)
        status, body = _get(url, timeout=120)  # runs the notebook in a kernel
        page = body.decode("utf-8", "replace")
    finally:
        out = _stop(proc, output)
    assert status == 200, page[:500]
    assert "pcrules-ops" in page  # the package's template, found on JUPYTER_PATH
    assert "application/vnd.jupyter.widget-view+json" in page, page[-2000:]  # the dashboard widget, no traceback
    assert "Traceback" not in page and "Traceback" not in out, out
    assert "Kernel shutdown" in out, out  # SIGTERM stopped Voila and its kernel
