"""The reference chat-server side: an ASGI app around the runtime, the browser snippet, a demo site.

Run it::

    pcrules serve --rules rules.yaml --log var/decisions.sqlite          # one process, state in memory
    pcrules serve --bundle published --redis redis://127.0.0.1:6379/0 --workers 4   # state shared in Redis
    pcrules serve --demo                                                 # + demo site and CSR console

and put the snippet on the customer's pages (after Pega's own script)::

    <meta name="pcrules-page" content="Bill Payment">
    <script src="/static/pcrules.js" defer data-endpoint="/v1"></script>

Routes, error format and limits: :mod:`pcrules.server.app`; settings: :mod:`pcrules.server.config`;
operator token, rate limits and CORS: :mod:`pcrules.server.security` (README "Security"); the shared store and
its locking: :mod:`pcrules.redis_store`; the demo: :mod:`pcrules.server.demo`.
The operator routes are served only with ``PCRULES_OPERATOR_TOKEN`` set. A bundle or
rules file is reloaded without a restart by ``POST /v1/admin/reload`` (with that token)
or SIGHUP (to each worker; with ``--workers`` SIGHUP to the parent restarts them).

Needs the ``server`` extra (starlette, uvicorn, redis, prometheus-client);
``uvicorn[standard]`` (httptools, uvloop) takes about 100 us of CPU off every
request. ``import pcrules`` never imports this package.
"""

from .app import ApiError, ServerConfig, Service, create_app

__all__ = ["ApiError", "ServerConfig", "Service", "create_app"]
