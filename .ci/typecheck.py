"""mypy over pcrules, and the baseline that only shrinks (`make typecheck`, part of `make test`).

The baseline is the ``[[tool.mypy.overrides]]`` entries of pyproject.toml that carry ``disable_error_code``:
per module, the error codes not fixed yet. This runs mypy once *without* them and fails when

* an error is not covered by the baseline (fix it; the baseline does not grow to hide new errors), or
* a baseline entry covers nothing any more (delete it: the baseline only shrinks).

``--suggest`` prints baseline entries for the uncovered errors (for a reviewed, deliberate addition only).
Exit status 0 when mypy is clean with the baseline and the baseline has nothing stale.
"""

from __future__ import annotations

import re
import sys
import tempfile
import tomllib
from collections import defaultdict
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
ERROR = re.compile(r"^(?P<path>[^:]+\.py):\d+(?::\d+)?: error: (?P<message>.*?)(?:  \[(?P<code>[a-z0-9-]+)\])?$")


def module_of(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load() -> tuple[dict, dict[str, set[str]]]:
    """pyproject's [tool.mypy] without the baseline entries, and the baseline: module -> codes."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    baseline: dict[str, set[str]] = defaultdict(set)
    kept = []
    for override in config.get("overrides", []):
        if "disable_error_code" not in override:
            kept.append(override)
            continue
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        for module in modules:
            if module.endswith("*"):
                sys.exit(f"typecheck: baseline entries name modules, not patterns: {module}")
            baseline[module] |= set(override["disable_error_code"])
    return {**config, "overrides": kept}, baseline


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def write_config(config: dict, path: Path) -> None:
    lines = ["[tool.mypy]"]
    lines += [f"{key} = {_toml(value)}" for key, value in config.items() if key != "overrides"]
    for override in config["overrides"]:
        lines.append("[[tool.mypy.overrides]]")
        lines += [f"{key} = {_toml(value)}" for key, value in override.items()]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    config, baseline = load()
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "pyproject.toml"
        write_config(config, config_file)
        out, err, status = api.run(["--config-file", str(config_file)])
    if status not in (0, 1) or err.strip():
        print(out, err, sep="\n", file=sys.stderr)
        return 2
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for line in out.splitlines():
        m = ERROR.match(line)
        if m:
            found[module_of(m["path"])][m["code"] or "misc"].append(line)
    uncovered = [line for module, codes in found.items() for code, lines in codes.items()
                 if code not in baseline.get(module, ()) for line in lines]
    stale = sorted((module, code) for module, codes in baseline.items() for code in codes
                   if not found.get(module, {}).get(code))
    total = sum(len(lines) for codes in found.values() for lines in codes.values())
    print(f"typecheck: mypy finds {total} error(s); the baseline covers {total - len(uncovered)} in "
          f"{sum(map(len, baseline.values()))} (module, code) entries")
    if uncovered:
        print(f"\n{len(uncovered)} error(s) not in the baseline (fix them):", *uncovered, sep="\n")
        if "--suggest" in sys.argv:
            wanted: dict[str, set[str]] = defaultdict(set)
            for module, codes in found.items():
                wanted[module] |= {c for c in codes if c not in baseline.get(module, ())}
            for module, codes in sorted(wanted.items()):
                if codes:
                    print(f'\n[[tool.mypy.overrides]]\nmodule = "{module}"\n'
                          f"disable_error_code = {_toml(sorted(codes | baseline.get(module, set())))}")
    if stale:
        print("\nbaseline entries that cover nothing any more (delete them from pyproject.toml):",
              *(f"  {module}: {code}" for module, code in stale), sep="\n")
    return 1 if uncovered or stale else 0


if __name__ == "__main__":
    sys.exit(main())
