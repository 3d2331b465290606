"""The demo site (``pcrules serve --demo``): customer pages, a stand-in for Pega's chat server, a CSR console.

The pages are static files (``static/demo/``): nothing from a request is ever
templated into HTML. What a real Pega server does for
``pega.chat.proactiveChat`` is imitated by these JSON routes, in memory, for
one server process:

    GET  /demo/pega/config                          the stand-in's settings (the wait time)
    GET  /demo/pega/GetAgentAvailability/{queue}    "true" / "false", as text (as Pega answers)
    POST /demo/pega/work                            a proactive-chat work item: {queue, metadata: {pxResults: [...]}}
    POST /demo/pega/work/{id}/status                {"status": "Accepted by customer" | "Declined by customer" | ...}
    GET  /demo/pega/work                            every work item, for the CSR console

The metadata reaches the CSR as name/value pairs, as Pega hands them over.

A work item's life: "Offered", then the visitor's answer ("Accepted by customer", "Declined by customer"), or
"No response" when the pop-up's wait time runs out, or "Page closed" when the visitor leaves the page with the
pop-up open (the stand-in reports both from the page). A page that vanished without a word (a crash, a lost
network) cannot report: an offer still "Offered" a few seconds past the wait time is "No response" all the same,
so the console never shows an offer as open forever. An accepted chat ends with "Chat closed" (the CSR console's
Close button, or the visitor's).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .http import STATIC_DIR, ApiError, json_response, only, read_json

if TYPE_CHECKING:
    from .app import Service

__all__ = ["DemoPega", "demo_routes", "STATUSES", "ANSWERS"]

OFFERED, ACCEPTED, NO_RESPONSE, CHAT_CLOSED = "Offered", "Accepted by customer", "No response", "Chat closed"
ANSWERS = (ACCEPTED, "Declined by customer", NO_RESPONSE, "Page closed")  # how an offer ends
STATUSES = (OFFERED, *ANSWERS, CHAT_CLOSED)
GRACE_S = 5.0  # past the wait time, an offer nobody answered is closed by the server (the page may be gone)
MAX_ITEMS = 500
MAX_PAIRS = 50
MAX_TEXT = 1000
MAX_BODY = 32 * 1024


def _text(name: str, value: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_body", f"{name}: expected a string, got {type(value).__name__}", field=name)
    if len(value) > limit:
        raise ApiError(400, "invalid_body", f"{name}: at most {limit} characters", field=name)
    return value


class DemoPega:
    """Work items of the stand-in Pega server, newest last; bounded."""

    def __init__(self, service: Service):
        self.service = service
        self.items: deque[dict] = deque(maxlen=MAX_ITEMS)
        self._ids = itertools.count(1001)

    def queues(self) -> list[str]:
        return list(self.service.runtime.spec.queues)

    def agent_available(self, queue: str) -> bool:
        if queue not in self.service.runtime.spec.queues:
            return False
        status = self.service.runtime.store.queue_status().get(queue)
        return status is None or status.agents_available is None or status.agents_available > 0

    def create(self, queue: str, pairs: list[dict]) -> dict:
        now = time.time()
        item = {"work_id": f"PCA-{next(self._ids)}", "queue": queue, "status": "Offered",
                "metadata": {"pxResults": pairs}, "created_at": now, "updated_at": now}
        self.items.append(item)
        return item

    def expire(self, now: float | None = None) -> None:
        """Offers still open GRACE_S past the wait time: "No response" (their page went away without a word)."""
        now = time.time() if now is None else now
        wait = float(self.service.runtime.spec.policy.offer_timeout_s)
        for item in self.items:
            if item["status"] == OFFERED and now >= item["created_at"] + wait + GRACE_S:
                item["status"] = NO_RESPONSE
                item["updated_at"] = item["created_at"] + wait

    def find(self, work_id: str) -> dict:
        self.expire()
        for item in self.items:
            if item["work_id"] == work_id:
                return item
        raise ApiError(404, "not_found", f"work_id: no work item {work_id[:64]!r}", field="work_id")


def _demo(request: Request) -> DemoPega:
    return request.app.state.service.demo


async def config(request: Request) -> Response:
    spec = request.app.state.service.runtime.spec
    return json_response({"wait_time_s": spec.policy.offer_timeout_s, "queues": list(spec.queues)})


async def availability(request: Request) -> Response:
    demo = _demo(request)
    available = await request.app.state.service.call(demo.agent_available, request.path_params["queue"])
    return PlainTextResponse("true" if available else "false")


async def create_work(request: Request) -> Response:
    body = await read_json(request, MAX_BODY)
    only(body, ("queue", "metadata"))
    queue = _text("queue", body.get("queue"), 128)
    if queue not in _demo(request).queues():  # as Pega: no work item for a queue it does not have
        raise ApiError(400, "invalid_body", f"queue: no queue {queue[:64]!r}", field="queue")
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("pxResults"), list):
        raise ApiError(400, "invalid_body", "metadata: expected {\"pxResults\": [{\"Name\": ..., \"Value\": ...}]}",
                       field="metadata")
    pairs = metadata["pxResults"]
    if len(pairs) > MAX_PAIRS:
        raise ApiError(400, "invalid_body", f"metadata.pxResults: at most {MAX_PAIRS} pairs",
                       field="metadata.pxResults")
    clean = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or set(pair) != {"Name", "Value"}:
            raise ApiError(400, "invalid_body", f"metadata.pxResults[{i}]: expected {{\"Name\", \"Value\"}}",
                           field=f"metadata.pxResults[{i}]")
        clean.append({"Name": _text(f"metadata.pxResults[{i}].Name", pair["Name"]),
                      "Value": _text(f"metadata.pxResults[{i}].Value", pair["Value"])})
    item = _demo(request).create(queue, clean)
    return json_response(item, 201)


async def set_status(request: Request) -> Response:
    body = await read_json(request, MAX_BODY)
    only(body, ("status",))
    status = body.get("status")
    if status not in STATUSES[1:]:
        raise ApiError(400, "invalid_body", f"status: expected one of {', '.join(STATUSES[1:])}", field="status")
    item = _demo(request).find(request.path_params["work_id"])
    if status == CHAT_CLOSED and item["status"] != ACCEPTED:  # only a chat that started can end
        raise ApiError(409, "not_in_chat", f"status: work item {item['work_id']} is {item['status']!r}, not a chat",
                       field="status")
    if status != CHAT_CLOSED and item["status"] != OFFERED:
        raise ApiError(409, "already_answered", f"status: work item {item['work_id']} is already {item['status']!r}",
                       field="status")
    item["status"] = status
    item["updated_at"] = time.time()
    return json_response(item)


async def list_work(request: Request) -> Response:
    demo = _demo(request)
    demo.expire()
    return json_response({"queues": demo.queues(), "items": list(demo.items),
                          "wait_time_s": demo.service.runtime.spec.policy.offer_timeout_s})


async def home(request: Request) -> Response:
    return RedirectResponse("/demo/", 302)


async def csr(request: Request) -> Response:
    return RedirectResponse("/demo/csr.html", 302)


def demo_routes() -> list[Any]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/csr", csr, methods=["GET"]),
        Route("/demo/pega/config", config, methods=["GET"]),
        Route("/demo/pega/GetAgentAvailability/{queue}", availability, methods=["GET"]),
        Route("/demo/pega/work", create_work, methods=["POST"]),
        Route("/demo/pega/work", list_work, methods=["GET"]),
        Route("/demo/pega/work/{work_id}/status", set_status, methods=["POST"]),
        Mount("/demo", StaticFiles(directory=STATIC_DIR / "demo", html=True), name="demo"),
    ]
