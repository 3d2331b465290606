"""Publishable bundles: rule spec + acceptance model + manifest, versioned, verified, switched atomically.

Layout of a publish directory (``published/`` below)::

    published/
      current -> versions/20260105T120000Z-3f9a1c0b2e   relative symlink: the bundle that serves
      history.json                                      versions made current, oldest first; the last is current
      versions/
        20260105T120000Z-3f9a1c0b2e/                    one immutable directory per publish
          rules.yaml                                    the rule spec (the analyst's text, verbatim when given as text)
          model.json                                    the model as ``scorer.to_dict()`` JSON (absent: rules only)
          manifest.json                                 version, ruleset, sha256 of every part, metrics, libraries,
                                                        and the audit: who published it, who rolled back to it
      .tmp-<version>-<pid>/                             only while publishing, or left by a crash: never current
      .lock                                             serialises publishers and rollbacks (flock)

**Atomic publish.** Every part is written and fsynced in a ``.tmp-*`` directory
inside the publish directory, the result is loaded and verified from there,
and only then is the directory renamed into ``versions/`` (one ``rename``).
The pointer is a symlink replaced with ``os.replace`` of a freshly made
temporary symlink, so a reader always sees the old bundle or the new one,
never a mix. A crash at any moment leaves ``current`` on a complete, verified
bundle; a ``.tmp-*`` directory is ignored by everything that reads bundles and
removed by :func:`clean_staging` (which :func:`publish` also runs).

**History and rollback.** ``history.json`` is rewritten with ``os.replace``.
The symlink is authoritative: history is trimmed (or extended) to end at what
``current`` points to before it is used, so a crash between the two writes
cannot make them disagree. :func:`rollback` verifies the previous version
loads before it moves ``current`` to it.

**Audit.** Publishing and rolling back are operator actions: each is an entry of the manifest's ``audit``
list, in the manifest of the version it made (publish) or made current again (rollback)::

    {"action": "publish" | "rollback", "operator": "alice", "at": "2026-12-07T08:40:00Z", "via": "tuner",
     "from": <the version current before, or null>, "to": <this version>, "made_current": true,
     "override": <the guardrail override the operator gave: {"by", "at", "reasons"}, or null>,
     "prev": <sha256 of the entry before; for the first, of "<version>:<content_sha256>">,
     "sha256": <sha256 of this entry without "sha256" (canonical JSON: sorted keys, no spaces)>}

``operator`` is who the caller says acted (the tuner: the authenticated dashboard operator; the CLI: the OS user or
``--operator``); without one, the OS user. A version's parts never change; its manifest gains an audit entry (one
``os.replace``, under the lock, verified before ``current`` moves) when a rollback makes it current again. The
entries are chained, so an edited, removed or reordered entry, or one copied from another bundle, is refused on
load like a changed part. A manifest without ``audit`` (written before pcrules recorded it) loads as before.

**What loading verifies** (:func:`load_bundle`; every failure is a
:class:`BundleError` naming the file and the problem): the manifest exists, is
JSON and has every required field; the bundle format is one this pcrules reads;
the bundle was written by the same pcrules major version and durable-rules
major version; every part listed has the recorded size and sha256 and no
unlisted model sits beside them; the audit entries (if any) are well formed
and chained; the rules validate and are the ruleset (name, version) the
manifest names; the model loads from JSON (never pickle: nothing
in a bundle can run code) and scores a probe event to a probability.

Only the standard library and PyYAML are imported here (and pcrules' own light
modules): a chat server loading a bundle never imports pandas, numpy or
scikit-learn.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ._version import __version__
from .core.spec import RuleSpec, load_spec
from .errors import PcrulesError, SpecError

if TYPE_CHECKING:
    from .scoring.protocol import Scorer

try:  # POSIX; elsewhere publishers are not serialised against each other
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BundleError",
    "Bundle",
    "RollbackResult",
    "FORMAT",
    "FORMAT_VERSION",
    "publish",
    "load_bundle",
    "rollback",
    "current_version",
    "history",
    "list_versions",
    "clean_staging",
    "os_user",
    "audit_lines",
]

log = logging.getLogger("pcrules.bundle")

FORMAT = "pcrules-bundle"
FORMAT_VERSION = 1
RULES_FILE = "rules.yaml"
MODEL_FILE = "model.json"
MANIFEST_FILE = "manifest.json"
PARTS = (RULES_FILE, MODEL_FILE)  # the only file names a manifest may list: no paths, no traversal
CURRENT = "current"
HISTORY = "history.json"
VERSIONS = "versions"
STAGING_PREFIX = ".tmp-"
LOCK_FILE = ".lock"
MAX_MANIFEST_BYTES = 1 << 20
SHA256 = re.compile(r"[0-9a-f]{64}\Z")
MAJOR = re.compile(r"\s*(\d+)")
AUDIT_ACTIONS = ("publish", "rollback")
MAX_OPERATOR_CHARS = 200

# A probe the model must score to a probability before it is published or served: the fields the runtime
# passes to ``predict_proba_one`` (the event's own fields, numbers as floats).
PROBE_EVENT: Mapping[str, Any] = {
    "visitor_id": "bundle-probe", "session_id": "bundle-probe", "page": "Home", "seconds_on_page": 42.0,
    "ts": 1767614400.0, "pages_viewed": 3.0, "session_seconds": 120.0, "device": "desktop", "returning": False,
}


class BundleError(PcrulesError):
    """A bundle could not be published, loaded, verified or made current; the message names the file."""


@dataclass(frozen=True)
class Bundle:
    path: Path  # the version directory (symlinks resolved)
    version: str
    spec: RuleSpec
    scorer: Scorer | None  # None for a rules-only bundle
    manifest: Mapping[str, Any] = field(repr=False)

    @property
    def metrics(self) -> Mapping[str, Any] | None:
        return self.manifest.get("metrics")

    @property
    def audit(self) -> list[Mapping[str, Any]]:
        """Who published this version and who rolled back to it, oldest first (empty for an older bundle)."""
        return list(self.manifest.get("audit") or [])


@dataclass(frozen=True)
class RollbackResult:
    version: str  # current now
    path: Path
    previous: str  # what was current before the rollback
    operator: str = ""  # who rolled back (recorded in the manifest of `version`)


def _no_stage(stage: str) -> None:
    pass


# Test hook: called with a stage name as publishing proceeds (tests kill the process there).
_stage: Callable[[str], None] = _no_stage


# --------------------------------------------------------------------------- versions of things


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    def dist(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "unknown"

    return {"pcrules": __version__, "python": platform.python_version(),
            "durable-rules": dist("durable-rules"), "pyyaml": str(getattr(yaml, "__version__", "unknown"))}


def _major(version: Any) -> int | None:
    match = MAJOR.match(version) if isinstance(version, str) else None
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- JSON and files


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(f"{what}: not valid JSON ({exc})") from None


def _plain(value: Any) -> Any:
    """JSON-safe metrics: numpy scalars/arrays via .item()/.tolist() (without importing numpy), NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    for convert in ("tolist", "item"):
        method = getattr(value, convert, None)
        if callable(method):
            return _plain(method())
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_durable(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{STAGING_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        _write_durable(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(out_dir / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- inputs


def _rules_text(rules: RuleSpec | str | os.PathLike | Mapping[str, Any]) -> tuple[str, RuleSpec]:
    """The text to store as rules.yaml and the spec it loads to; SpecError (nothing written) when invalid."""
    if isinstance(rules, RuleSpec):
        return _dump_spec(rules.source), rules
    if isinstance(rules, Mapping):
        spec = load_spec(rules)
        return _dump_spec(spec.source), spec
    if isinstance(rules, (str, os.PathLike)):
        path: Path | None = None
        if isinstance(rules, os.PathLike):
            path = Path(rules)
        else:
            if "\n" not in rules:
                try:
                    if rules.endswith((".yaml", ".yml", ".json")) or Path(rules).is_file():
                        path = Path(rules)
                except (OSError, ValueError):
                    path = None
            if path is None:
                return rules, load_spec(rules)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"(file): cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
            raise SpecError([problem], str(path)) from None
        try:
            return text, load_spec(text if "\n" in text else text + "\n")
        except SpecError as exc:
            raise SpecError(list(exc.problems), str(path)) from None
    raise SpecError([f"(spec): expected a file path, a YAML string, a mapping or a RuleSpec, "
                     f"got {type(rules).__name__}"])


def _dump_spec(source: Mapping[str, Any]) -> str:
    return yaml.safe_dump(json.loads(json.dumps(dict(source), default=str)), sort_keys=False, allow_unicode=True)


def _model_data(model: Any) -> tuple[dict, str]:
    """The model as a JSON object and where it came from (for messages)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read the model: {exc.strerror or exc}") from None
        data, origin = _parse_json(raw, str(path)), str(path)
    elif isinstance(model, Mapping):
        data, origin = model, "model"
    elif callable(getattr(model, "to_dict", None)):
        data, origin = model.to_dict(), f"model ({type(model).__name__}.to_dict())"
    else:
        raise BundleError(f"model: expected a path to a model JSON file, a dict or a scorer with to_dict(), "
                          f"got {type(model).__name__}")
    if not isinstance(data, Mapping):
        raise BundleError(f"{origin}: expected a JSON object, got {type(data).__name__}")
    try:  # exactly what will be stored: JSON data only, no NaN
        data = json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{origin}: not JSON data ({exc})") from None
    return data, origin


def _scorer_from_data(data: Mapping[str, Any], what: str) -> Scorer:
    """Load a scorer from its JSON dict (never code) and check that it scores the probe event."""
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        raise BundleError(f"{what}: the model has no 'kind' (expected the output of a scorer's to_dict())")
    from .scoring import load_scorer  # the registry of model kinds (plain Python: no numpy)

    try:
        scorer = load_scorer(data)
    except BundleError:
        raise
    except Exception as exc:  # whatever a from_dict raises on bad data (KeyError, TypeError, ValueError, ...)
        raise BundleError(f"{what}: cannot load the model of kind {kind!r}: {type(exc).__name__}: {exc}") from None
    _probe(scorer, what)
    return scorer


def _probe(scorer: Scorer, what: str) -> float:
    try:
        raw = scorer.predict_proba_one(dict(PROBE_EVENT))
    except Exception as exc:
        raise BundleError(f"{what}: the model failed on a probe event: {type(exc).__name__}: {exc}") from None
    if raw is None:
        raise BundleError(f"{what}: the model gave no score (None) for a probe event; a bundle without a model "
                          f"is published with no model at all")
    if isinstance(raw, (bool, str, bytes)) or not isinstance(raw, (int, float)) or not 0.0 <= float(raw) <= 1.0:
        raise BundleError(f"{what}: the model scored a probe event {raw!r}; expected a probability in [0, 1]")
    return float(raw)


# --------------------------------------------------------------------------- publish


def _plain_mapping(value: Any, what: str) -> dict[str, Any] | None:
    """`value` (a mapping or None) as plain JSON data; BundleError naming `what` if it is not one."""
    try:
        plain = None if value is None else _plain(value)
    except TypeError as exc:
        raise BundleError(f"{what}: cannot be stored as JSON ({exc})") from None
    if plain is not None and not isinstance(plain, dict):
        raise BundleError(f"{what}: expected a mapping, got {type(value).__name__}")
    return plain


def publish(rules: RuleSpec | str | os.PathLike | Mapping[str, Any], model: Any = None,
            out_dir: str | os.PathLike = "published", metrics: Mapping[str, Any] | None = None,
            *, activate: bool = True, operator: str | None = None, via: str = "api",
            override: Mapping[str, Any] | None = None) -> Path:
    """Write a new bundle version under ``out_dir/versions/`` and make it current; return its directory.

    ``rules``: a spec path, YAML text, a dict or a RuleSpec; ``model``: a model JSON path, a dict (a
    scorer's ``to_dict()``), a scorer with ``to_dict()``, or None for a rules-only bundle. Everything is
    validated before anything is written: a bad spec raises SpecError, a bad model BundleError.

    The manifest's audit records the publish: ``operator`` (default: the OS user, :func:`os_user`), ``via`` (what
    published: "cli", "tuner", "api"), the version current before, and ``override`` (a guardrail override: who,
    when, why) when one was given.
    """
    who = _operator(operator)
    text, spec = _rules_text(rules)  # SpecError before anything touches the disk
    rules_bytes = text.encode("utf-8")
    model_bytes: bytes | None = None
    model_kind: str | None = None
    expected_probe: float | None = None
    if model is not None:
        data, origin = _model_data(model)
        scorer = _scorer_from_data(data, origin)
        expected_probe = _probe(scorer, origin)
        model_kind = data["kind"]
        model_bytes = (json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()
    plain_metrics = _plain_mapping(metrics, "metrics")
    plain_override = _plain_mapping(override, "override")

    parts = {RULES_FILE: rules_bytes}
    if model_bytes is not None:
        parts[MODEL_FILE] = model_bytes
    files = {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in parts.items()}
    content = _content_of(files)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / VERSIONS).mkdir(exist_ok=True)
    with _locked(out):
        clean_staging(out, _locked_already=True)
        now = datetime.now(UTC)
        version = _free_version(out, f"{now:%Y%m%dT%H%M%SZ}-{content[:10]}")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle_version": version,
            "created": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "ruleset": {"name": spec.name, "version": spec.version},
            "model": None if model_kind is None else {"kind": model_kind, "file": MODEL_FILE},
            "files": files,
            "content_sha256": content,
            "metrics": plain_metrics,
            "libraries": library_versions(),
        }
        manifest["audit"] = [_audit_entry("publish", who, now, via, current_version(out), version, activate,
                                          plain_override, _audit_anchor(version, content))]
        staging = out / f"{STAGING_PREFIX}{version}-{os.getpid()}"
        staging.mkdir()
        try:
            for name, part in parts.items():
                _write_durable(staging / name, part)
                _stage(f"wrote {name}")
            _write_durable(staging / MANIFEST_FILE,
                           (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
            _stage(f"wrote {MANIFEST_FILE}")
            _fsync_dir(staging)
            check = load_bundle(staging, _staging=True)  # what a reader will get, verified before it is visible
            if check.spec.version != spec.version or (
                    expected_probe is not None
                    and (check.scorer is None or _probe(check.scorer, MODEL_FILE) != expected_probe)):
                raise BundleError(f"{staging}: the written bundle does not load back to what was published")
            final = out / VERSIONS / version
            os.rename(staging, final)  # the version appears complete, or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(out / VERSIONS)
        _stage("renamed")
        if activate:
            previous = _history(out)
            _point(out, version)
            _stage("pointed")
            _write_history(out, [*previous, version])
    log.info("published bundle %s (ruleset %s %s, model %s) in %s%s, by %s", version, spec.name, spec.version,
             model_kind, out, " and made it current" if activate else "", who)
    return final


def _free_version(out: Path, base: str) -> str:
    version, n = base, 1
    while (out / VERSIONS / version).exists():
        n += 1
        version = f"{base}-{n}"
    return version


def _point(out: Path, version: str) -> None:
    """Make ``out/current`` a symlink to ``versions/<version>``: one atomic rename over the old link."""
    link = out / CURRENT
    if link.exists() and not link.is_symlink():
        raise BundleError(f"{link}: exists and is not a symlink; refusing to replace it")
    tmp = out / f"{STAGING_PREFIX}{CURRENT}-{os.getpid()}-{secrets.token_hex(4)}"
    os.symlink(f"{VERSIONS}/{version}", tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(out)


def _write_history(out: Path, versions: list[str]) -> None:
    body = {"format_version": FORMAT_VERSION, "history": versions}
    _replace_durable(out / HISTORY, (json.dumps(body, indent=1) + "\n").encode())


# --------------------------------------------------------------------------- pointer, history, listing


def current_version(out_dir: str | os.PathLike) -> str | None:
    """The version ``out_dir/current`` points to, or None when nothing was made current."""
    link = Path(out_dir) / CURRENT
    if not link.is_symlink():
        if link.exists():
            raise BundleError(f"{link}: expected a symlink to {VERSIONS}/<version>")
        return None
    target = Path(os.readlink(link))
    if target.parent != Path(VERSIONS) or not target.name or target.name.startswith("."):
        raise BundleError(f"{link}: points to {target}, not to {VERSIONS}/<version>")
    return target.name


def _history(out: Path) -> list[str]:
    """Versions made current, oldest first, ending with the current one (the symlink is authoritative)."""
    recorded: list[str] = []
    path = out / HISTORY
    if path.exists():
        body = _parse_json(path.read_bytes(), str(path))
        items = body.get("history") if isinstance(body, dict) else None
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise BundleError(f"{path}: expected {{\"history\": [version, ...]}}")
        recorded = list(items)
    current = current_version(out)
    if current is None:
        return []
    if current in recorded:  # a crash between moving the pointer and writing the history: trim to the pointer
        return recorded[: len(recorded) - recorded[::-1].index(current)]
    return [*recorded, current]


def history(out_dir: str | os.PathLike) -> list[str]:
    """Versions made current, oldest first; the last is current; rollback goes to the one before it."""
    return _history(Path(out_dir))


def list_versions(out_dir: str | os.PathLike) -> list[str]:
    """Every complete version directory (staging directories are not versions), by name."""
    root = Path(out_dir) / VERSIONS
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def clean_staging(out_dir: str | os.PathLike, *, _locked_already: bool = False) -> list[Path]:
    """Remove what interrupted publishes left (``.tmp-*``); return what was removed.

    Safe at any time: it takes the publish lock, so it never races a publish in progress.
    """
    out = Path(out_dir)
    if not out.is_dir():
        return []
    with contextlib.nullcontext() if _locked_already else _locked(out):
        removed = []
        for leftover in sorted(out.glob(f"{STAGING_PREFIX}*")):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
            log.warning("removed %s, left by an interrupted publish", leftover)
        return removed


def rollback(out_dir: str | os.PathLike, *, operator: str | None = None, via: str = "api") -> RollbackResult:
    """Make the version that was current before the current one current again (verified first); the manifest of
    that version records the rollback in its audit (``operator``, default the OS user; ``via``; from, to)."""
    who = _operator(operator)
    out = Path(out_dir)
    if not out.is_dir():
        raise BundleError(f"{out}: no such publish directory")
    with _locked(out):
        past = _history(out)
        if not past:
            raise BundleError(f"{out}: nothing is current; nothing to roll back")
        if len(past) < 2:
            raise BundleError(f"{out}: {past[-1]} is the first version made current; nothing to roll back to")
        target, previous = past[-2], past[-1]
        try:
            bundle = load_bundle(out / VERSIONS / target)
        except BundleError as exc:
            raise BundleError(f"cannot roll back to {target}: {exc}; {previous} stays current") from None
        _record(bundle, "rollback", who, via, previous)  # the record first: no unrecorded rollback
        _point(out, target)
        _write_history(out, past[:-1])
    log.info("rolled back %s from %s to %s, by %s", out, previous, target, who)
    return RollbackResult(target, out / VERSIONS / target, previous, who)


# --------------------------------------------------------------------------- audit


def os_user() -> str:
    """The OS account running this process (``getpass.getuser()``), or "unknown" where it has none."""
    try:
        return getpass.getuser() or "unknown"
    except Exception:  # no login name in the environment or the password database (a container)
        return "unknown"


def _operator(operator: str | None) -> str:
    who = os_user() if operator is None else operator
    if not isinstance(who, str) or not who.strip() or len(who) > MAX_OPERATOR_CHARS \
            or any(ord(c) < 32 or ord(c) == 127 for c in who):
        raise BundleError(f"operator: expected a name of 1 to {MAX_OPERATOR_CHARS} printable characters, "
                          f"got {who!r}")
    return who.strip()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _audit_anchor(version: str, content: str) -> str:
    """What the first audit entry of a bundle chains to: its version and its parts (no copying between bundles)."""
    return _sha256(f"{version}:{content}".encode())


def _audit_entry(action: str, operator: str, when: datetime, via: str, source: str | None, version: str,
                 made_current: bool, override: Mapping[str, Any] | None, prev: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "action": action, "operator": operator,
        "at": when.isoformat(timespec="seconds").replace("+00:00", "Z"), "via": str(via),
        "from": source, "to": version, "made_current": bool(made_current),
        "override": None if override is None else dict(override), "prev": prev,
    }
    entry["sha256"] = _sha256(_canonical(entry))
    return entry


def _record(bundle: Bundle, action: str, operator: str, via: str, source: str | None) -> None:
    """Append an audit entry to the manifest of `bundle` (one atomic replace), verified before it counts: a
    manifest that would not load back is put back as it was."""
    path = bundle.path / MANIFEST_FILE
    before = path.read_bytes()
    manifest = dict(bundle.manifest)
    past = list(manifest.get("audit") or [])
    prev = past[-1]["sha256"] if past else _audit_anchor(bundle.version, _content_of(manifest["files"]))
    manifest["audit"] = [*past, _audit_entry(action, operator, datetime.now(UTC), via, source, bundle.version,
                                             True, None, prev)]
    _replace_durable(path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    try:
        load_bundle(bundle.path)
    except BaseException:
        _replace_durable(path, before)
        raise


def _content_of(files: Mapping[str, Any]) -> str:
    return _sha256(json.dumps({n: dict(e) for n, e in files.items()}, sort_keys=True).encode())


def _check_audit(manifest: Mapping[str, Any], path: Path, content: str) -> None:
    """The audit entries are well formed, each names this version, and the chain from the anchor holds."""
    if "audit" not in manifest:
        return  # written before pcrules recorded operators
    audit = manifest["audit"]
    if not isinstance(audit, list):
        raise BundleError(f"{path}: audit: expected a list of entries, got {type(audit).__name__}")
    prev = _audit_anchor(manifest["bundle_version"], content)
    for i, entry in enumerate(audit):
        where = f"{path}: audit[{i}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: expected an object, got {type(entry).__name__}")
        if entry.get("action") not in AUDIT_ACTIONS:
            raise BundleError(f"{where}: action {entry.get('action')!r} is not one of {', '.join(AUDIT_ACTIONS)}")
        for key in ("operator", "at", "via"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise BundleError(f"{where}: {key}: required (a non-empty string)")
        if entry.get("to") != manifest["bundle_version"]:
            raise BundleError(f"{where}: records a {entry['action']} to {entry.get('to')!r}, not to this bundle "
                              f"({manifest['bundle_version']}); refused")
        if entry.get("from") is not None and not isinstance(entry.get("from"), str):
            raise BundleError(f"{where}: from: expected a version or null")
        if entry.get("override") is not None and not isinstance(entry.get("override"), dict):
            raise BundleError(f"{where}: override: expected an object or null")
        if entry.get("prev") != prev:
            raise BundleError(f"{where}: does not follow the entry before it (prev); the audit was edited; refused")
        body = {k: v for k, v in entry.items() if k != "sha256"}
        if entry.get("sha256") != _sha256(_canonical(body)):
            raise BundleError(f"{where}: sha256 mismatch: the entry was changed after it was recorded; refused")
        prev = entry["sha256"]


def audit_lines(manifest: Mapping[str, Any]) -> list[str]:
    """The audit as a person reads it, one line per action (``pcrules bundle-info``)."""
    audit = manifest.get("audit")
    if not audit:
        return ["  audit     none recorded (published before pcrules recorded operators)"]
    lines = []
    for entry in audit:
        verb = "published" if entry["action"] == "publish" else "rolled back to"
        text = f"{verb} by {entry['operator']} at {entry['at']} via {entry['via']}"
        if entry["action"] == "publish":
            text += f" (current before: {entry.get('from') or 'none'}" + \
                ("" if entry.get("made_current", True) else "; not made current") + ")"
        else:
            text += f" (from {entry.get('from')})"
        override = entry.get("override")
        if override:
            text += f"; guardrail overridden by {override.get('by', entry['operator'])}"
        lines.append(f"  audit     {text}")
    return lines


# --------------------------------------------------------------------------- load + verify


def _version_dir(path: Path) -> Path:
    """The concrete version directory ``path`` names (a publish dir follows ``current``)."""
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"{path}: no such bundle or publish directory")
    if path.is_dir() and ((path / CURRENT).is_symlink() or (path / VERSIONS).is_dir()) \
            and not (path / MANIFEST_FILE).exists():
        version = current_version(path)
        if version is None:
            raise BundleError(f"{path}: no current bundle (nothing published yet?)")
        path = path / VERSIONS / version
        if not path.is_dir():
            raise BundleError(f"{path.parent.parent / CURRENT}: points to {VERSIONS}/{version}, which does not exist")
    resolved = path.resolve()  # pin the target: a pointer moved meanwhile cannot mix two versions
    if not resolved.is_dir():
        raise BundleError(f"{path}: not a bundle directory")
    return resolved


def load_bundle(path: str | os.PathLike, *, _staging: bool = False) -> Bundle:
    """Load and verify a bundle: a publish dir (follows ``current``), ``<dir>/current`` or a version dir."""
    where = _version_dir(Path(path))
    if where.name.startswith(STAGING_PREFIX) and not _staging:
        raise BundleError(f"{where}: a half-written bundle left by an interrupted publish; never served "
                          f"(remove it with clean_staging)")
    manifest_path = where / MANIFEST_FILE
    try:
        size = manifest_path.stat().st_size
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: missing; {where} is not a complete bundle") from None
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    manifest = _parse_json(manifest_path.read_bytes(), str(manifest_path))
    _check_manifest(manifest, manifest_path)
    if where.parent.name == VERSIONS and where.name != manifest["bundle_version"]:
        raise BundleError(f"{manifest_path}: bundle_version {manifest['bundle_version']!r} does not match "
                          f"its directory {where.name!r}")

    files: Mapping[str, Any] = manifest["files"]
    contents: dict[str, bytes] = {}
    for name, entry in files.items():
        part = where / name
        try:
            data = part.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{part}: missing (listed in {MANIFEST_FILE})") from None
        if len(data) != entry["bytes"] or _sha256(data) != entry["sha256"]:
            raise BundleError(f"{part}: sha256 mismatch (manifest {entry['sha256'][:16]}..., {entry['bytes']} bytes; "
                              f"file {_sha256(data)[:16]}..., {len(data)} bytes): changed after publishing; refused")
        contents[name] = data
    if MODEL_FILE not in files and (where / MODEL_FILE).exists():
        raise BundleError(f"{where / MODEL_FILE}: present but not listed in {MANIFEST_FILE}; refused")
    content = _content_of(files)
    if manifest.get("content_sha256") not in (None, content):
        raise BundleError(f"{manifest_path}: content_sha256 does not match the files it lists")
    _check_audit(manifest, manifest_path, content)

    rules_path = where / RULES_FILE
    try:
        text = contents[RULES_FILE].decode("utf-8")
        spec = load_spec(text if "\n" in text else text + "\n")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{rules_path}: not UTF-8 text ({exc})") from None
    except SpecError as exc:
        raise BundleError(f"{rules_path}: {exc}") from None
    named = manifest["ruleset"]
    if (spec.name, spec.version) != (named["name"], named["version"]):
        raise BundleError(f"{rules_path}: is ruleset {spec.name!r} version {spec.version}, but the manifest names "
                          f"{named['name']!r} version {named['version']}")

    scorer = None
    if MODEL_FILE in contents:
        model_path = where / MODEL_FILE
        data = _parse_json(contents[MODEL_FILE], str(model_path))
        if not isinstance(data, dict):
            raise BundleError(f"{model_path}: expected a JSON object, got {type(data).__name__}")
        scorer = _scorer_from_data(data, str(model_path))
    elif manifest.get("model") is not None:
        raise BundleError(f"{manifest_path}: names a model but lists no {MODEL_FILE}")
    return Bundle(where, manifest["bundle_version"], spec, scorer, manifest)


def _check_manifest(manifest: Any, path: Path) -> None:
    def bad(message: str) -> BundleError:
        return BundleError(f"{path}: {message}")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise bad(f"format {manifest.get('format')!r} is not {FORMAT!r}; not a pcrules bundle")
    fv = manifest.get("format_version")
    if isinstance(fv, bool) or not isinstance(fv, int):
        raise bad(f"format_version: expected an integer, got {fv!r}")
    if fv != FORMAT_VERSION:
        newer = " (written by a newer pcrules)" if fv > FORMAT_VERSION else ""
        raise bad(f"unknown bundle format version {fv}{newer}; this pcrules reads format {FORMAT_VERSION}")
    for key, kind in (("bundle_version", str), ("created", str), ("ruleset", dict), ("files", dict),
                      ("libraries", dict)):
        if key not in manifest:
            raise bad(f"required field {key!r} is missing")
        if not isinstance(manifest[key], kind) or not manifest[key]:
            raise bad(f"{key}: expected a non-empty {'string' if kind is str else 'object'}, got {manifest[key]!r}")
    for key in ("name", "version"):
        if not isinstance(manifest["ruleset"].get(key), str):
            raise bad(f"ruleset.{key}: required (a string)")

    libraries = manifest["libraries"]
    ours = library_versions()
    for lib in ("pcrules", "durable-rules"):
        theirs = libraries.get(lib)
        if lib == "pcrules" and not isinstance(theirs, str):
            raise bad("libraries.pcrules: required (the pcrules version that wrote the bundle)")
        if lib != "pcrules" and (theirs in (None, "unknown") or ours[lib] == "unknown"):
            continue  # recorded for information when either side cannot tell
        if _major(theirs) is None or _major(theirs) != _major(ours[lib]):
            raise bad(f"written with {lib} {theirs}, incompatible with the installed {lib} {ours[lib]} "
                      f"(major versions must match); republish the bundle with this version")

    files = manifest["files"]
    if RULES_FILE not in files:
        raise bad(f"files: must list {RULES_FILE}")
    for name, entry in files.items():
        if name not in PARTS:
            raise bad(f"files: unexpected part {name!r}; a bundle holds only {', '.join(PARTS)}")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not SHA256.match(entry["sha256"]) \
                or isinstance(entry.get("bytes"), bool) or not isinstance(entry.get("bytes"), int):
            raise bad(f"files.{name}: expected {{\"sha256\": <64 hex digits>, \"bytes\": <integer>}}")
