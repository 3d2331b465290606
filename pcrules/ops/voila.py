"""Start the Voila ops dashboard (``dashboards/ops.ipynb``) safely, and the tuner (``dashboards/triggers.ipynb``,
``pcrules tuner``: :func:`start_app` / :func:`serve_app` with :func:`app_env`) with the very same settings.

``pcrules dashboard --log var/demo/decisions.sqlite`` (or ``--log postgresql://user@host/db``; or :func:`serve`,
or :func:`start` for a server in the
background, as the browser tests do) runs Voila with:

* **bound to 127.0.0.1** unless another host is asked for explicitly; beyond loopback, every request and
  websocket needs a token or a trusted SSO proxy (:mod:`pcrules.ops.auth`, the ``auth=`` of :func:`serve_app`);
* **tracebacks hidden** (``show_tracebacks`` off: a failing cell shows a one-line notice, and the dashboard
  itself turns every log problem into a readable message);
* **template and theme overrides off** (``allow_template_override`` / ``allow_theme_override`` = ``NO``: a URL
  cannot switch the page to another template);
* **idle kernels culled**: every page view starts a kernel (~130 MB) that Voila does not stop when the tab
  closes; a kernel without a browser connected and idle for ``cull_idle_s`` is shut down;
* **no request leaves the machine**: Voila's stock ``lab`` template links two Font Awesome style sheets on a
  CDN; ``dashboards/jupyter/voila/templates/pcrules-ops`` is ``lab`` without them (put on ``JUPYTER_PATH``);
* the log (and optionally a published bundle) given to the kernel through ``PCRULES_DECISION_LOG`` /
  ``PCRULES_BUNDLE`` as absolute paths (a ``postgresql://`` log as its URL); the kernel can import pcrules
  (``PYTHONPATH`` gains the directory
  pcrules is imported from when that is a checkout rather than a site-packages directory).

The notebook, ``voila.json`` and the template are package data (``pcrules/dashboards/``, found through
:mod:`pcrules.resources`; a checkout's ``dashboards/`` links to them), so an installed wheel serves the dashboard.
Voila runs in that folder, so the same settings in ``voila.json`` apply to a Voila started by hand in
``dashboards/`` (a test keeps the two equal); the command line given here wins over any other Voila config file.
"""

from __future__ import annotations

import os
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pcrules

from .. import logdb, resources
from .auth import is_loopback
from .view import BUNDLE_ENV, LOG_ENV

if TYPE_CHECKING:
    from .auth import AuthConfig

__all__ = ["DASHBOARDS", "NOTEBOOK", "TEMPLATE", "SAFE_SETTINGS", "DashboardServer", "free_port", "voila_command",
           "voila_env", "app_env", "start", "start_app", "serve", "serve_app"]

DASHBOARDS = resources.dashboards_dir()  # pcrules/dashboards (package data; dashboards/ in a checkout links to it)
NOTEBOOK = resources.ops_notebook()
JUPYTER_DATA = resources.jupyter_data_dir()  # a Jupyter data directory: voila/templates/pcrules-ops
# The sys.path entry pcrules is imported from, put on the kernel's PYTHONPATH only when it is not a site directory
# (a checkout or an editable install; a site directory is on the kernel's path already, and first on PYTHONPATH it
# would come before the standard library).
IMPORT_ROOT = Path(pcrules.__file__).resolve().parent.parent
TEMPLATE = "pcrules-ops"
CULL_IDLE_S = 600
CULL_INTERVAL_S = 60

# Traitlets settings (class -> trait -> value); dashboards/voila.json holds the same.
SAFE_SETTINGS: dict[str, dict[str, Any]] = {
    "Voila": {"ip": "127.0.0.1", "open_browser": False},
    "VoilaConfiguration": {
        "template": TEMPLATE,
        "show_tracebacks": False,
        "allow_template_override": "NO",
        "allow_theme_override": "NO",
    },
    "MappingKernelManager": {"cull_idle_timeout": CULL_IDLE_S, "cull_interval": CULL_INTERVAL_S,
                             "cull_connected": False},
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (another process could take it before Voila does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _is_site_dir(path: Path) -> bool:
    """Whether `path` is one of this interpreter's site-packages directories (where a wheel installs pcrules)."""
    dirs = [*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"]]
    return any(Path(d).resolve() == path.resolve() for d in dirs if d)


def _arg(cls: str, trait: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "True" if value else "False"
    else:
        text = str(value)
    return f"--{cls}.{trait}={text}"


def voila_command(port: int, *, host: str = "127.0.0.1", base_url: str = "/", cull_idle_s: int = CULL_IDLE_S,
                  cull_interval_s: int = CULL_INTERVAL_S, notebook: Path = NOTEBOOK,
                  python: str = sys.executable) -> list[str]:
    """The Voila command line: every safety setting explicit (command-line values beat config files)."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"port: expected 1..65535, got {port!r}")
    if not base_url.startswith("/") or not base_url.endswith("/"):
        raise ValueError(f"base_url: expected a path that starts and ends with '/', got {base_url!r}")
    settings = {cls: dict(traits) for cls, traits in SAFE_SETTINGS.items()}
    settings["Voila"].update(ip=host, port=int(port), base_url=base_url)
    settings["MappingKernelManager"].update(cull_idle_timeout=int(cull_idle_s), cull_interval=int(cull_interval_s))
    args = [python, "-m", "voila", str(notebook), "--no-browser"]
    for cls, traits in settings.items():
        args += [_arg(cls, trait, value) for trait, value in traits.items()]
    return args


def voila_env(log_path: str | os.PathLike, bundle_path: str | os.PathLike | None = None,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of Voila and its kernels: the log (a file made absolute, or a database URL such as
    ``postgresql://...`` as given) and the bundle, the template, pcrules."""
    return app_env({LOG_ENV: log_path, BUNDLE_ENV: bundle_path}, base)


def app_env(paths: Mapping[str, str | os.PathLike | None], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of Voila and its kernels for any of the apps: each of `paths` (variable -> path) made
    absolute (a URL, ``scheme://...``, is passed as given), a variable whose path is None or "" removed; the
    template on JUPYTER_PATH, pcrules importable."""
    env = dict(os.environ if base is None else base)
    for name, path in paths.items():
        if path is None or str(path) == "":
            env.pop(name, None)
        elif logdb.is_url(str(path)):
            env[name] = str(path)
        else:
            env[name] = str(Path(path).expanduser().absolute())
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(JUPYTER_DATA), env.get("JUPYTER_PATH", "")) if p)
    root = "" if _is_site_dir(IMPORT_ROOT) else str(IMPORT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class DashboardServer:
    """A Voila process started by :func:`start`; ``stop()`` (or leaving a ``with`` block) ends it and its kernels."""

    def __init__(self, process: subprocess.Popen, url: str, server_log: Path | None, log_file: IO | None):
        self.process = process
        self.url = url
        self.server_log = server_log
        self._log_file = log_file

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> DashboardServer:
        """Wait until Voila answers (its static files; fetching the page would start a kernel)."""
        deadline = time.monotonic() + timeout
        probe = f"{self.url}voila/static/voila.js"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Voila exited with status {self.process.returncode} before answering"
                                   + self._tail())
            try:
                with urllib.request.urlopen(probe, timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Voila did not answer at {self.url} within {timeout:.0f} s" + self._tail())
            time.sleep(0.2)

    def _tail(self) -> str:
        if self.server_log is None or not self.server_log.exists():
            return ""
        text = self.server_log.read_text(encoding="utf-8", errors="replace")
        return f"; the end of its log ({self.server_log}):\n" + "\n".join(text.splitlines()[-30:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Voila shuts its kernels down), then SIGKILL to the process group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT if os.name == "nt" else signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                if os.name != "nt":
                    os.killpg(self.process.pid, signal.SIGKILL)  # the group this module started
                else:  # pragma: no cover
                    self.process.kill()
                self.process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(log_path: str | os.PathLike, *, port: int = 0, host: str = "127.0.0.1",
          bundle_path: str | os.PathLike | None = None, base_url: str = "/",
          server_log: str | os.PathLike | None = None,
          cull_idle_s: int = CULL_IDLE_S, cull_interval_s: int = CULL_INTERVAL_S,
          env: Mapping[str, str] | None = None) -> DashboardServer:
    """Start Voila on the ops dashboard in the background (``port=0``: a free port); see the module docstring.

    ``server_log``: a file for Voila's own log; ``"-"``: this process's stdout/stderr; None: discarded.
    Call ``wait_ready()`` before opening the URL.
    """
    return start_app(NOTEBOOK, voila_env(log_path, bundle_path, env), port=port, host=host, base_url=base_url,
                     server_log=server_log, cull_idle_s=cull_idle_s, cull_interval_s=cull_interval_s)


def start_app(notebook: Path, env: Mapping[str, str], *, port: int = 0, host: str = "127.0.0.1",
              base_url: str = "/", server_log: str | os.PathLike | None = None, cull_idle_s: int = CULL_IDLE_S,
              cull_interval_s: int = CULL_INTERVAL_S, extra_args: Sequence[str] = ()) -> DashboardServer:
    """Start Voila on any notebook of ``pcrules/dashboards/`` (the ops dashboard, the tuner) with the same safe
    settings and template, in the background; `env` is the whole environment (:func:`app_env`); `extra_args`:
    more Voila options (:mod:`pcrules.ops.auth` adds its own token and the operator's header)."""
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: the notebook is missing from the installed package "
                                f"(package data pcrules/dashboards/; reinstall pcrules)")
    port = port or free_port(host if is_loopback(host) else "0.0.0.0")
    cmd = voila_command(port, host=host, base_url=base_url, cull_idle_s=cull_idle_s, cull_interval_s=cull_interval_s,
                        notebook=notebook) + list(extra_args)
    inherit = server_log == "-"
    log_file = open(server_log, "ab") if server_log and not inherit else None
    process = subprocess.Popen(cmd, cwd=DASHBOARDS, env=dict(env),
                               stdin=subprocess.DEVNULL,
                               stdout=None if inherit else (log_file or subprocess.DEVNULL),
                               stderr=None if inherit else subprocess.STDOUT, start_new_session=True)
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}{base_url}"
    return DashboardServer(process, url, Path(server_log) if log_file else None, log_file)


def serve(log_path: str | os.PathLike, *, port: int = 8866, host: str = "127.0.0.1",
          bundle_path: str | os.PathLike | None = None, base_url: str = "/", cull_idle_s: int = CULL_IDLE_S,
          out: IO[str] = sys.stdout, auth: AuthConfig | None = None) -> int:
    """Run the dashboard in the foreground until Ctrl-C (what ``pcrules dashboard`` does); `auth`: behind sign-in."""
    if auth is None and not is_loopback(host):
        print(f"warning: serving on {host}: the dashboard has no login, so anyone who can reach this address "
              f"sees the decision log", file=sys.stderr)
    if logdb.is_url(str(log_path)):
        shown = logdb.describe(str(log_path))  # without its password
    else:
        shown = str(Path(log_path).absolute())
        if not Path(log_path).exists():
            print(f"note: {log_path} does not exist yet; the dashboard says so until it does", file=sys.stderr)
    return serve_app(NOTEBOOK, voila_env(log_path, bundle_path), port=port, host=host, base_url=base_url,
                     cull_idle_s=cull_idle_s, out=out, auth=auth,
                     banner=f"ops dashboard: {{url}}  (decision log {shown}; Ctrl-C stops)")


def serve_app(notebook: Path, env: Mapping[str, str], *, banner: str, port: int = 8866, host: str = "127.0.0.1",
              base_url: str = "/", cull_idle_s: int = CULL_IDLE_S, out: IO[str] = sys.stdout,
              auth: AuthConfig | None = None) -> int:
    """Run Voila on `notebook` in the foreground until Ctrl-C (``pcrules dashboard``, ``pcrules tuner``); `banner`
    (its ``{url}`` filled in) is printed once Voila answers. `auth`: Voila on 127.0.0.1 behind the sign-in proxy of
    :mod:`pcrules.ops.auth` on `host`:`port` (what the CLI does beyond loopback)."""

    def stop_on(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # stop Voila (and its kernels) too, never leave it orphaned

    # SIGINT too: a shell ignores it in a command started with `&`, yet Ctrl-C on `make demo` should stop us
    previous = {sig: signal.signal(sig, stop_on)
                for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig is not None}
    server = None
    try:
        if auth is not None:
            from .auth import serve_behind_proxy

            return serve_behind_proxy(notebook, env, auth, banner=banner, port=port, host=host, base_url=base_url,
                                      cull_idle_s=cull_idle_s, out=out)
        server = start_app(notebook, env, port=port, host=host, base_url=base_url, cull_idle_s=cull_idle_s,
                           server_log="-")  # Voila logs to this terminal
        server.wait_ready()
        print(banner.replace("{url}", server.url), file=out, flush=True)
        return server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
