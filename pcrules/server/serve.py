"""`pcrules serve`: run the reference server under uvicorn."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

from ..errors import PcrulesError
from .app import Service, create_app, freeze_startup_heap, guard_connections
from .config import CONFIG_ENV, ServerConfig, config_from_env, security_summary

__all__ = ["main", "config_from_args"]


def config_from_args(args: argparse.Namespace, environ: dict | None = None) -> ServerConfig:
    """The command line over $PCRULES_SERVER_CONFIG (a JSON object of ServerConfig fields: rate limits,
    cors_origins, trusted_proxies, metrics_public ...), with the secrets from $PCRULES_OPERATOR_TOKEN and
    $PCRULES_VISITOR_ID_KEY. ValueError / TypeError name what is wrong."""
    env = os.environ if environ is None else environ
    raw = env.get(CONFIG_ENV, "").strip()
    try:
        base = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"${CONFIG_ENV}: not valid JSON ({exc.msg})") from None
    if not isinstance(base, dict):
        raise ValueError(f"${CONFIG_ENV}: expected a JSON object of server settings")
    if args.rules or args.bundle:
        base.pop("rules", None)
        base.pop("bundle", None)
    given = {"rules": args.rules, "bundle": args.bundle, "redis_url": args.redis, "log_path": args.log,
             "cors_origins": getattr(args, "cors_origins", None),
             "trusted_proxies": getattr(args, "trusted_proxies", None),
             "metrics_public": getattr(args, "metrics_public", None),
             "redis_allow_volatile": getattr(args, "allow_volatile_redis", None),
             "follow_bundle": False if getattr(args, "pin_bundle", None) else None}
    base.update({k: v for k, v in given.items() if v is not None})
    if args.demo:
        base["demo"] = True
    try:
        config = ServerConfig(**base)
    except TypeError as exc:
        raise ValueError(f"${CONFIG_ENV}: {exc}".replace("ServerConfig.__init__() ", "")) from None
    return config_from_env(config, env)


def _check_redis(store: Any, allow_volatile: bool) -> tuple[str, bool]:
    """What `pcrules serve` says of its Redis at start-up, and whether that is a warning; VolatileRedis (one line
    naming the URL and the setting to change) when it keeps no append-only file and that was not allowed."""
    from ..runtime.stores.redis import VolatileRedis

    try:
        persistence = store.check_persistence(allow_volatile)
        store.ping()  # adopts the state marker (created on a new Redis)
    except VolatileRedis:
        raise
    except PcrulesError as exc:
        store.allow_volatile = allow_volatile  # checked when Redis first answers
        return f"warning: {exc}; serving 503 until it answers (its persistence is checked then)", True
    epoch = store.epoch or ""
    try:
        since = time.strftime("since %Y-%m-%d %H:%M:%S UTC", time.gmtime(int(epoch.split(":")[0])))
    except (ValueError, OverflowError, OSError):
        since = f"{epoch!r}"
    marker = f"state marker {store.epoch_key} {'created' if store.epoch_created else since}"
    line = f"redis {store.url}: {persistence}; {marker}"
    if persistence.startswith("VOLATILE"):
        return (f"warning: {line}; if Redis loses its data, requests get 503 until the loss is acknowledged "
                f"(README: Several workers)"), True
    return line, False


def main(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workers = max(1, int(getattr(args, "workers", 1) or 1))
    if workers > 1 and not config.redis_url:
        print("error: --workers > 1 needs --redis URL: in-memory state is not shared between processes",
              file=sys.stderr)
        return 2
    if workers > 1 and config.demo:
        print("error: --demo keeps the stand-in Pega server's chats in one process; run it with one worker",
              file=sys.stderr)
        return 2
    try:  # load everything once here, so that a bad ruleset or bundle stops us before uvicorn starts
        service = Service.build(config)
    except (PcrulesError, OSError, ValueError) as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 1
    if config.redis_url:  # before anything is printed or served: a Redis that a restart would empty is refused
        try:
            redis_said = _check_redis(service.runtime.store, config.redis_allow_volatile)
        except PcrulesError as exc:
            service.close()
            print(f"error: cannot start: {exc}", file=sys.stderr, flush=True)
            return 1
    spec = service.runtime.spec
    where = f"http://{args.host}:{args.port}"
    store = (f"redis {service.runtime.store.url}"  # type: ignore[attr-defined]  # (without its password)
             if config.redis_url else "in memory (this process)")
    print(f"pcrules serve: ruleset {spec.name!r} ({spec.version}) from {config.describe_source()}; state {store}; "
          f"decision log {config.describe_log()}; {workers} worker(s) on {where}", flush=True)
    pg_log = service.decision_log
    if getattr(pg_log, "journal_dir", None) is not None:  # a PostgreSQL log: where records wait, and whether it answers
        if pg_log.connected:
            print(f"decision log: PostgreSQL answers; each record is journaled in {pg_log.journal_dir} first",
                  flush=True)
        else:
            print(f"warning: decision log: {pg_log.health().problem}; decisions are journaled in "
                  f"{pg_log.journal_dir} and moved into PostgreSQL when it answers", file=sys.stderr, flush=True)
    for line in security_summary(config):
        print(line, flush=True)
    if config.redis_url:
        print(redis_said[0], file=sys.stderr if redis_said[1] else sys.stdout, flush=True)
    if config.demo:
        print(f"demo site: {where}/demo/   CSR console: {where}/demo/csr.html (a demo: its Pega stand-in and CSR "
              f"console have no login; do not expose it to the internet)", flush=True)
    from .transport import GuardedHttpTools

    # GuardedHttpTools: time limits, a head size limit and a connection cap that uvicorn lacks (transport.py)
    # proxy_headers off: uvicorn would otherwise take X-Forwarded-For from any peer on 127.0.0.1 (its default
    # FORWARDED_ALLOW_IPS) as the client's address before the app sees it, so that a local client could pick its
    # rate-limit key; the app reads that header only from the configured trusted_proxies (ClientAddress).
    common = dict(host=args.host, port=args.port, log_level="info", access_log=False, server_header=False,
                  timeout_graceful_shutdown=5, lifespan="on", http=GuardedHttpTools, proxy_headers=False)
    if workers == 1:
        guard_connections(config, service)
        app = create_app(config, service=service)
        freeze_startup_heap()
        uvicorn.run(app, **common)
        return 0
    service.close()
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    # Each worker counts in files here; /metrics of any worker adds them up.
    made = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pcrules-metrics-")
    try:
        uvicorn.run("pcrules.server.app:app_from_env", factory=True, workers=workers, **common)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return 0
