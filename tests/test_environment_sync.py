"""pyproject.toml and environment.yml must list the same dependencies with the same lower bounds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# conda-forge packages whose name differs from PyPI's
CONDA_TO_PYPI = {"redis-py": "redis"}
REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(>=\s*[0-9][^,;\s]*)?")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(requirement: str) -> tuple[str, str | None]:
    m = REQ.match(requirement)
    assert m, f"cannot parse requirement {requirement!r}"
    return _norm(m[1]), (m[2] or "").replace(" ", "") or None


def pyproject_requirements() -> dict[str, str | None]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [r for r in extra if not r.startswith("pcrules")]
    return dict(_parse(r) for r in reqs)


def environment_requirements() -> dict[str, str | None]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out: dict[str, str | None] = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith(("-e", "python", "pip")) and not item.startswith("pip-"):
                continue
            name, bound = _parse(item)
            out[CONDA_TO_PYPI.get(name, name)] = bound
    return out


def test_every_dependency_has_a_lower_bound():
    missing = [name for name, bound in pyproject_requirements().items() if bound is None]
    assert not missing, f"pyproject.toml dependencies without a lower bound: {missing}"


def test_environment_yml_matches_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_python_floor_matches():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert project["requires-python"] == ">=3.11"
    assert "python>=3.11" in env["dependencies"]
