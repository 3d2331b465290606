"""The package's layers (DESIGN.md, "A map of the package"): arrows point down only.

* ``pcrules.core`` imports nothing of the package outside ``core`` but ``pcrules.errors`` (a leaf);
* ``pcrules.runtime`` imports nothing of ``analysis``, ``ops`` or ``server``, directly or through the modules
  it imports;
* ``import pcrules`` and the runtime path (a Runtime deciding, logging and taking an answer) import no
  pandas, numpy, scikit-learn, pyarrow, matplotlib or Jupyter module.

Imports are read from the source with ``ast``: module-level ones and those inside functions (the lazy
ones), ``if TYPE_CHECKING:`` blocks included, and ``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import deque
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pcrules"

# top-level packages the runtime path must not load (and every jupyter* one)
HEAVY = ("pandas", "numpy", "sklearn", "scipy", "pyarrow", "matplotlib", "IPython", "ipykernel", "ipywidgets",
         "nbformat", "nbclient", "voila", "traitlets", "tornado", "zmq")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


@cache
def imports_of(name: str) -> frozenset[str]:
    """The modules `name` imports (of any package), as dotted names; `from pkg import sub` gives ``pkg.sub``
    when ``sub`` is a module of this package."""
    path = modules()[name]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules())
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    found.discard("")
    return frozenset(found)


def package_imports(name: str) -> set[str]:
    """The modules of this package that `name` imports, with the packages a submodule import runs first
    (``pcrules.a.b`` runs ``pcrules/a/__init__``; ``pcrules/__init__`` itself runs before anything and is
    counted only where it is imported by name)."""
    out = set()
    for imported in imports_of(name):
        parts = imported.split(".")
        for i in range(2, len(parts)):
            out.add(".".join(parts[:i]))
        out.add(imported)
    return {m for m in out if m in modules() and m != name}


def closure(starts: list[str]) -> dict[str, str]:
    """Every module of this package that importing `starts` can import (lazy imports included), each with the
    module that imports it on a shortest path from `starts` (to explain a failure)."""
    seen = dict.fromkeys(starts, "")
    todo = deque(starts)
    while todo:
        current = todo.popleft()
        for nxt in sorted(package_imports(current)):
            if nxt not in seen:
                seen[nxt] = current
                todo.append(nxt)
    return seen


def _chain(seen: dict[str, str], module: str) -> str:
    chain = [module]
    while seen.get(chain[-1]):
        chain.append(seen[chain[-1]])
    return " <- ".join(chain)


def _in(module: str, *layers: str) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def test_the_walk_sees_the_package_and_its_lazy_imports():
    names = modules()
    assert {"pcrules", "pcrules.errors", "pcrules.core.policy", "pcrules.runtime.runtime", "pcrules.cli"} <= set(names)
    # cli imports the analysis side only inside its commands: a lazy import, found all the same
    assert any(_in(m, "pcrules.analysis") for m in imports_of("pcrules.cli"))
    assert "pcrules.core.spec" in package_imports("pcrules.runtime.runtime")


def test_core_imports_only_core_and_errors():
    allowed = ("pcrules.core", "pcrules.errors")
    bad = {name: sorted(m for m in package_imports(name) if not _in(m, *allowed))
           for name in modules() if _in(name, "pcrules.core")}
    bad = {name: found for name, found in bad.items() if found}
    assert not bad, f"core imports outside core (only pcrules.errors is allowed): {bad}"


def test_errors_is_a_leaf():
    assert package_imports("pcrules.errors") == set()


@pytest.mark.parametrize("layer", ["pcrules.analysis", "pcrules.ops", "pcrules.server"])
def test_runtime_imports_nothing_of_analysis_ops_or_server(layer):
    seen = closure([name for name in modules() if _in(name, "pcrules.runtime")])
    bad = [_chain(seen, m) for m in seen if _in(m, layer)]
    assert not bad, f"the runtime reaches {layer}:\n" + "\n".join(sorted(bad))


RUNTIME_PATH = """
import sys, tempfile, pathlib
import pcrules
after_import = sorted(sys.modules)
from pcrules import Runtime, SQLiteDecisionLog, load_spec
spec = load_spec({"name": "layers", "policy": {"holdout": 0.0},
                  "queues": {"Billing": {"max_wait_s": 180}},
                  "rules": [{"name": "bill", "when": {"page": {"matches": "^Bill"}, "seconds_on_page": {"gte": 60}},
                             "offer": {"queue": "Billing", "metadata": {"Page": "{page}"}}}]})
with tempfile.TemporaryDirectory() as tmp:
    log = SQLiteDecisionLog(pathlib.Path(tmp) / "decisions.sqlite")
    with Runtime(spec, log=log) as runtime:
        runtime.update_queue("Billing", agents_available=2, estimated_wait_s=30)
        decision = runtime.observe({"visitor_id": "v1", "session_id": "s1", "page": "Bill Payment",
                                    "seconds_on_page": 61})
        assert decision.action == "offer", decision
        runtime.accept(decision.offer_id)
print("\\n".join(after_import))
print("--")
print("\\n".join(sorted(sys.modules)))
"""


def test_import_pcrules_and_the_runtime_path_import_no_data_science_or_jupyter_stack(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", RUNTIME_PATH], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    after_import, after_runtime = (part.split() for part in proc.stdout.split("--\n"))
    assert "pcrules" in after_import and "pcrules.runtime.runtime" in after_runtime
    for stage, loaded in (("import pcrules", after_import), ("the runtime path", after_runtime)):
        heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY)
                       | {m.split(".")[0] for m in loaded if m.startswith("jupyter")})
        assert not heavy, f"{stage} imported {heavy}"


def test_no_private_name_crosses_a_module():
    """`from pcrules.x import _name` anywhere in the package would couple one module to another's insides."""
    crossing = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pcrules")):
                crossing += [f"{name}: {alias.name}" for alias in node.names
                             if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not crossing, crossing
