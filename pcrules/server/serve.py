"""`pcrules serve`: run the reference server under uvicorn."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict

from ..errors import PcrulesError
from .app import Service, create_app
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
             "cors_origins": getattr(args, "cors_origins", None), "trusted_proxies": getattr(args, "trusted_proxies", None),
             "metrics_public": getattr(args, "metrics_public", None)}
    base.update({k: v for k, v in given.items() if v is not None})
    if args.demo:
        base["demo"] = True
    try:
        config = ServerConfig(**base)
    except TypeError as exc:
        raise ValueError(f"${CONFIG_ENV}: {exc}".replace("ServerConfig.__init__() ", "")) from None
    return config_from_env(config, env)


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
    spec = service.runtime.spec
    where = f"http://{args.host}:{args.port}"
    store = f"redis {config.redis_url}" if config.redis_url else "in memory (this process)"
    print(f"pcrules serve: ruleset {spec.name!r} ({spec.version}) from {config.describe_source()}; state {store}; "
          f"decision log {config.log_path or 'off'}; {workers} worker(s) on {where}", flush=True)
    for line in security_summary(config):
        print(line, flush=True)
    if config.redis_url:
        try:
            service.runtime.store.ping()  # type: ignore[attr-defined]
        except PcrulesError as exc:
            print(f"warning: {exc}; serving 503 until it answers", file=sys.stderr, flush=True)
    if config.demo:
        print(f"demo site: {where}/demo/   CSR console: {where}/demo/csr.html (a demo: its Pega stand-in and CSR "
              f"console have no login; do not expose it to the internet)", flush=True)
    common = dict(host=args.host, port=args.port, log_level="info", access_log=False, server_header=False,
                  timeout_graceful_shutdown=5, lifespan="on")
    if workers == 1:
        uvicorn.run(create_app(config, service=service), **common)
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
