"""The files pcrules ships and reads at run time, found through :mod:`importlib.resources`.

Every data file the package needs lives inside the package (so a wheel carries it) and is located here,
never from ``__file__/..`` arithmetic that would point into a source checkout:

==========================  =====================================================================
:func:`default_rules`       ``pcrules/default_rules.yaml``: the embedded default ruleset
:func:`demo_rules`          ``pcrules/server/demo_rules.yaml``: the demo site's ruleset
:func:`sample_events`       ``pcrules/data/sample_events.csv.gz``: the shipped sample (``data/README.md``)
:func:`online_shoppers`     ``pcrules/data/online_shoppers/online_shoppers_intention.csv`` (UCI, CC BY 4.0)
:func:`dashboards_dir`      ``pcrules/dashboards/``: the Voila dashboards, ``voila.json``, ``jupyter/`` templates
:func:`ops_notebook`        ``pcrules/dashboards/ops.ipynb``
:func:`triggers_notebook`   ``pcrules/dashboards/triggers.ipynb``
:func:`jupyter_data_dir`    ``pcrules/dashboards/jupyter/`` (a Jupyter data directory: ``voila/templates/``)
==========================  =====================================================================

In a source checkout the top-level ``data/`` and ``dashboards/`` folders hold symlinks to these files.

Each function returns a :class:`pathlib.Path` to a real file or directory: callers hand them to ``open``,
``sqlite``/``csv`` readers and to Voila (a subprocess), which need file-system paths. pcrules is always
installed unzipped (a wheel, an editable install or a checkout), where ``importlib.resources.files`` is
already a path; from a zip import, a file is extracted to a temporary file kept until the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["dashboards_dir", "default_rules", "demo_rules", "files", "jupyter_data_dir", "online_shoppers",
           "ops_notebook", "sample_events", "triggers_notebook", "voila_json"]

PACKAGE = "pcrules"
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def files() -> Traversable:
    """The package's root as a Traversable (``importlib.resources.files("pcrules")``)."""
    return resources.files(PACKAGE)


def _path(*parts: str, directory: bool = False) -> Path:
    item = files().joinpath(*parts)
    if isinstance(item, Path):
        return item
    if directory:  # importlib.resources.as_file extracts directories only from Python 3.12 on
        raise FileNotFoundError(f"{'/'.join(parts)}: pcrules must be installed unzipped to use this directory")
    return _extracted.enter_context(resources.as_file(item))


@functools.cache
def default_rules() -> Path:
    """The embedded default ruleset (``pcrules validate``, ``pcrules demo``, a server without ``--rules``)."""
    return _path("default_rules.yaml")


@functools.cache
def demo_rules() -> Path:
    """The ruleset of the demo site (``pcrules serve --demo`` without ``--rules``)."""
    return _path("server", "demo_rules.yaml")


@functools.cache
def sample_events() -> Path:
    """The shipped sample of observation events (gzipped CSV; schema in ``data/README.md``)."""
    return _path("data", "sample_events.csv.gz")


@functools.cache
def online_shoppers() -> Path:
    """The UCI Online Shoppers Purchasing Intention data set (its README: source, licence, known dirt)."""
    return _path("data", "online_shoppers", "online_shoppers_intention.csv")


@functools.cache
def dashboards_dir() -> Path:
    """The Voila dashboards' folder (Voila's working directory: its ``voila.json`` is read from there)."""
    return _path("dashboards", directory=True)


def ops_notebook() -> Path:
    """The ops dashboard notebook (``pcrules dashboard``)."""
    return dashboards_dir() / "ops.ipynb"


def triggers_notebook() -> Path:
    """The trigger tuner's Voila app."""
    return dashboards_dir() / "triggers.ipynb"


def voila_json() -> Path:
    """Voila's settings for a Voila started by hand in the dashboards' folder (the launcher's, equal)."""
    return dashboards_dir() / "voila.json"


def jupyter_data_dir() -> Path:
    """A Jupyter data directory holding ``voila/templates/pcrules-ops`` (put on ``JUPYTER_PATH``)."""
    return dashboards_dir() / "jupyter"
