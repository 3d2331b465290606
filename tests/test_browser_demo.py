"""End to end in a real browser: the demo site, the snippet, the Pega stand-in and the CSR console.

Playwright drives Debian's chromium (/usr/bin/chromium; never a downloaded
browser) against `pcrules serve --demo` started here on a free port with a
ruleset whose Bill Payment rule fires after 3 s on the page. Without chromium
the tests fail with a clear message rather than skip: CI installs it (.ci/run).
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from browser import Watch, chromium, demo_server, state

pytestmark = pytest.mark.browser

WAIT_S = 3  # the Bill Payment rule's time on page
TOKEN = "browser-test-operator-token"  # the operator routes (here: /metrics) need it
PAYLOAD = "<img src=x onerror=\"alert('xss-img')\"><script>alert('xss-script')</script><b>bold</b> & 'q'"

RULES = {
    "name": "browser-test",
    "policy": {"max_offers_per_session": 3, "decline_cooldown_s": 3600, "offer_timeout_s": 60, "holdout": 0.0,
               "session_idle_ttl_s": 1800},
    "queues": {"Billing": {"max_wait_s": 180}, "Sales": {"max_wait_s": 180}, "Support": {"max_wait_s": 300}},
    "rules": [
        {"name": "bill-payment-stuck", "priority": 20,
         "when": {"page": "Bill Payment", "seconds_on_page": {"gte": WAIT_S}},
         "offer": {"queue": "Billing", "default_ui": True,
                   "metadata": {"Page Name": "{page}", "Time spent on page": "{minutes} mins"}}},
        {"name": "searcher", "priority": 10, "when": {"page": {"matches": "^Search"}, "seconds_on_page": {"gte": 1}},
         "offer": {"queue": "Support", "metadata": {"Page Name": "{page}", "Time spent on page": "{minutes} mins"}}},
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with demo_server(tmp_path_factory.mktemp("demo"), RULES, TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    yield ctx
    ctx.close()


# wait_for_function gets arrow functions, never bare expressions: Playwright evaluates an expression with eval()
# inside the page, which the pages' Content-Security-Policy (no 'unsafe-eval') refuses.


def csr_card(browser, server, queue: str, work_id: str, **context_args):
    ctx = browser.new_context(viewport={"width": 1200, "height": 800}, **context_args)
    page = ctx.new_page()
    watch = Watch(page)
    page.goto(server.url + "/demo/csr.html")
    card = page.wait_for_selector(f'section[data-queue="{queue}"] article.chat[data-work-id="{work_id}"]',
                                  timeout=10_000)
    return ctx, page, watch, card


def test_offer_pops_up_once_the_wait_time_has_passed_and_accept_reaches_the_csr_console(
        browser, context, server, tmp_path):
    page = context.new_page()
    watch = Watch(page)
    started = time.monotonic()
    page.goto(server.url + "/demo/bill-payment.html")
    popup = page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
    seen_after = time.monotonic() - started
    shown_at_ms = float(popup.get_attribute("data-shown-at"))  # ms since navigation started
    print(f"\npop-up shown {shown_at_ms:.0f} ms after navigation (rule: {WAIT_S} s; seen by the test after "
          f"{seen_after:.2f} s)")
    assert WAIT_S * 1000 <= shown_at_ms < WAIT_S * 1000 + 1000
    assert seen_after < WAIT_S + 1.5

    s = state(page)
    # asked twice: at load (wait, recheck after the rest of the 3 s) and then when the rule could fire: no polling
    assert [d["action"] for d in s["decisions"]] == ["wait", "offer"]
    assert s["decisions"][0]["recheck_after"] == pytest.approx(WAIT_S - s["decisions"][0]["at"], abs=0.25)
    assert len(watch.observes) == 2
    sent = watch.observes[-1]
    assert sent["page"] == "Bill Payment" and WAIT_S <= sent["seconds_on_page"] < WAIT_S + 1
    assert sent["visitor_id"] == s["visitorId"] and sent["session_id"] == s["sessionId"]
    assert "Bill Payment" in popup.inner_text() and "0 mins" in popup.inner_text()
    page.screenshot(path=str(tmp_path / "popup.png"))

    page.click("#pega-proactive-popup .pega-accept")
    page.wait_for_selector("#pega-proactive-popup", state="detached")
    chat = page.wait_for_selector("#pega-chat-window")
    page.wait_for_function("() => window.pcrules.state.lastAnswer && window.pcrules.state.lastAnswer.status === 200")
    s = state(page)
    assert s["lastAnswer"] == {"answer": "accept", "status": 200} and s["stopped"] == "session: in_chat"
    assert s["workId"] in chat.inner_text() and "Billing" in chat.inner_text()

    ctx, csr, csr_watch, card = csr_card(browser, server, "Billing", s["workId"])
    try:
        assert card.query_selector('td[data-name="Page Name"]').inner_text() == "Bill Payment"
        assert card.query_selector('td[data-name="Time spent on page"]').inner_text() == "0 mins"
        csr.screenshot(path=str(tmp_path / "csr.png"))
        assert not csr_watch.errors and not csr_watch.dialogs
    finally:
        ctx.close()
    metrics = page.request.get(server.url + "/metrics", headers=server.auth).text()
    assert 'pcrules_outcomes_total{status="accepted"}' in metrics
    assert not watch.errors and not watch.dialogs  # no console error, no CSP violation, no dialog

    page.goto(server.url + "/demo/plans.html")  # the same session, in a chat now: the snippet does not even ask
    page.wait_for_timeout(300)
    assert state(page)["stopped"] == "session: in_chat" and state(page)["requests"] == 0


def test_decline_dismisses_the_offer_and_none_comes_back_during_the_cooldown(browser, context, server):
    page = context.new_page()
    watch = Watch(page)
    page.goto(server.url + "/demo/bill-payment.html")
    page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
    page.click("#pega-proactive-popup .pega-decline")
    page.wait_for_selector("#pega-proactive-popup", state="detached")
    page.wait_for_function("() => window.pcrules.state.stopped !== null")
    s = state(page)
    assert s["lastAnswer"] == {"answer": "decline", "status": 200}
    assert s["decisions"][-1]["reason"] == "cooldown"  # asked again at once: the server says cooldown

    page.reload()  # the same session on a fresh page: longer than the rule's wait, and nothing comes
    page.wait_for_timeout((WAIT_S + 1.5) * 1000)
    assert page.query_selector("#pega-proactive-popup") is None
    s = state(page)
    assert [(d["action"], d["reason"]) for d in s["decisions"]] == [("none", "cooldown")]
    assert s["stopped"] == "page: cooldown" and s["requests"] == 1

    other = context.new_page()  # another tab: a new session of the same visitor
    other.goto(server.url + "/demo/bill-payment.html")
    other.wait_for_function("() => window.pcrules.state.stopped !== null")
    assert state(other)["sessionId"] != s["sessionId"] and state(other)["visitorId"] == s["visitorId"]
    assert state(other)["decisions"][-1]["reason"] == "cooldown"
    assert not watch.errors and not watch.dialogs

    # the CSR console lists the declined offer among the others, not as a chat waiting in Billing
    csr = browser.new_page()
    csr.goto(server.url + "/demo/csr.html")
    csr.wait_for_selector('body[data-loaded="1"]')
    declined = [row.inner_text() for row in csr.query_selector_all("#offers tr")]
    assert any("Declined by customer" in text and "Bill Payment" in text for text in declined)
    csr.close()


def test_a_page_name_holding_html_and_script_shows_as_inert_text(browser, server, tmp_path):
    # bypass_csp: the pages' Content-Security-Policy would stop injected script anyway; here it must not be needed
    ctx = browser.new_context(viewport={"width": 1200, "height": 800}, bypass_csp=True)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(server.url + "/demo/search.html?q=" + urllib.parse.quote(PAYLOAD))
        popup = page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
        name = "Search: " + PAYLOAD
        assert popup.query_selector(".pega-proactive-lead").inner_text() == f"An agent can help you with {name}."
        assert popup.query_selector("dd").inner_text() == name
        assert page.query_selector_all("#pega-proactive-popup img, #pega-proactive-popup script, "
                                       "#pega-proactive-popup b") == []
        page.screenshot(path=str(tmp_path / "popup.png"))
        page.click("#pega-proactive-popup .pega-accept")
        page.wait_for_function("() => window.pcrules.state.workId")
        work_id = state(page)["workId"]

        csr_ctx, csr, csr_watch, card = csr_card(browser, server, "Support", work_id, bypass_csp=True)
        try:
            assert card.query_selector('td[data-name="Page Name"]').inner_text() == name
            assert csr.query_selector_all(".queues img, .queues script, .queues b") == []
            csr.screenshot(path=str(tmp_path / "csr.png"))
            csr.wait_for_timeout(500)
            assert csr_watch.dialogs == [] and not csr_watch.errors
        finally:
            csr_ctx.close()
        assert watch.dialogs == [] and not watch.errors
        assert page.evaluate("document.querySelectorAll('img').length") == 0
    finally:
        ctx.close()


HIDE_SWITCH = """
(() => {
  let hidden = false;
  Object.defineProperty(Document.prototype, "visibilityState",
                        {configurable: true, get() { return hidden ? "hidden" : "visible"; }});
  Object.defineProperty(Document.prototype, "hidden", {configurable: true, get() { return hidden; }});
  window.__hidden = [];
  window.__setHidden = (h) => { hidden = h; window.__hidden.push(performance.now());
                                document.dispatchEvent(new Event("visibilitychange")); };
})();
"""


def test_time_on_page_pauses_while_the_tab_is_hidden(context, server):
    context.add_init_script(HIDE_SWITCH)
    page = context.new_page()
    page.goto(server.url + "/demo/bill-payment.html")
    page.wait_for_timeout(1000)
    page.evaluate("window.__setHidden(true)")
    page.wait_for_timeout(2000)
    page.evaluate("window.__setHidden(false)")
    popup = page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
    shown_at = float(popup.get_attribute("data-shown-at"))
    hid_at, back_at = page.evaluate("window.__hidden")
    visible_ms = shown_at - (back_at - hid_at)
    assert back_at - hid_at >= 1900
    assert WAIT_S * 1000 <= visible_ms < WAIT_S * 1000 + 1000  # the hidden 2 s did not count
    offer = state(page)["decisions"][-1]
    assert offer["action"] == "offer" and WAIT_S <= offer["at"] < WAIT_S + 1


def test_the_stand_in_has_the_seeds_three_calls_and_pegas_event_behaviour(context, server):
    page = context.new_page()
    page.goto(server.url + "/demo/")  # Home: no rule, the snippet stops at once
    page.wait_for_function("() => window.pcrules.state.stopped !== null")
    api = page.evaluate("""() => {
      const api = pega.chat.proactiveChat, names = new Set();
      for (let o = api; o && o !== Object.prototype; o = Object.getPrototypeOf(o))
        Object.getOwnPropertyNames(o).forEach(n => typeof api[n] === "function" && n !== "constructor" && names.add(n));
      return [...names].sort();
    }""")
    assert api == ["accept", "decline", "off", "offer", "on", "trigger"]
    events = page.evaluate("""() => new Promise(resolve => {
      const api = pega.chat.proactiveChat, seen = [];
      const names = ["proactivechat-ready", "proactivechat-accepted", "proactivechat-declined",
                     "proactivechat-not-ready"];
      names.forEach(n => api.on(n, data => seen.push([n, data])));
      const ignored = () => seen.push(["off-listener-called"]);
      api.on("proactivechat-ready", ignored); api.off("proactivechat-ready", ignored);
      api.offer("Nowhere", {"Page Name": "Home"}, true);             // no agent there: nothing, no event
      setTimeout(() => {
        seen.push(["popup after Nowhere", !!document.getElementById("pega-proactive-popup")]);
        api.offer("Billing", {"Page Name": "Home"}, false);          // own UI: loaded, but no default pop-up
        setTimeout(() => {
          seen.push(["popup with bDefaultUI false", !!document.getElementById("pega-proactive-popup")]);
          api.decline();
          setTimeout(() => resolve(seen), 700);
        }, 700);
      }, 700);
    })""")
    names = [e[0] for e in events]
    assert names == ["popup after Nowhere", "proactivechat-ready", "popup with bDefaultUI false",
                     "proactivechat-declined"], events
    assert events[0][1] is False and events[2][1] is False
    assert events[3][1]["status"] == "declined" and events[3][1]["WorkId"].startswith("PCA-")
    work = json.loads(page.request.get(server.url + "/demo/pega/work").text())["items"]
    assert [w["status"] for w in work if w["work_id"] == events[3][1]["WorkId"]] == ["Declined by customer"]


def test_an_unanswered_offer_expires_and_leaving_the_page_withdraws_it(browser, tmp_path):
    rules = {**RULES, "policy": {**RULES["policy"], "offer_timeout_s": 2, "max_offers_per_session": 1},
             "rules": [{**RULES["rules"][0], "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 1}}}]}
    with demo_server(tmp_path, rules, TOKEN) as srv:
        ctx = browser.new_context()
        try:
            page = ctx.new_page()
            page.goto(srv.url + "/demo/bill-payment.html")
            page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
            page.wait_for_selector("#pega-proactive-popup", state="detached", timeout=5_000)  # Pega's wait time
            page.wait_for_function("() => window.pcrules.state.stopped !== null", timeout=5_000)
            s = state(page)
            assert s["lastAnswer"] == {"answer": "expire", "status": 200}
            assert s["stopped"] == "session: max_offers"  # asked again: the session had its one offer
        finally:
            ctx.close()

        ctx = browser.new_context()  # a new visitor leaves the page while the offer is up
        try:
            page = ctx.new_page()
            page.goto(srv.url + "/demo/bill-payment.html")
            page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
            page.goto(srv.url + "/demo/")  # pagehide: the snippet withdraws the offer (expire, keepalive)
            page.goto(srv.url + "/demo/bill-payment.html")
            page.wait_for_function("() => window.pcrules.state.stopped !== null", timeout=5_000)
            # not offer_pending: the offer left behind was closed when its page went away
            assert [d["reason"] for d in state(page)["decisions"]] == ["max_offers"]
        finally:
            ctx.close()
        assert 'pcrules_outcomes_total{status="expired"} 2.0' in _get_text(srv.url + "/metrics", srv.auth)


def _get_text(url: str, headers: dict | None = None) -> str:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
        return r.read().decode()


def test_paying_the_bill_reports_the_goal_through_the_snippet(browser, context, server):
    import httpx

    before = _goals_counted(httpx, server)
    page = context.new_page()
    watch = Watch(page)
    page.goto(server.url + "/demo/bill-payment.html")
    page.wait_for_function("() => window.pcrules && window.pcrules.state.requests > 0")
    page.get_by_role("button", name="Pay € 42.17").click()
    page.locator(".pay-status").filter(has_text="Paid, thank you.").wait_for(timeout=10_000)
    assert state(page)["goals"] == [{"goal": "bill_paid", "status": 202}]
    assert _goals_counted(httpx, server) == before + 1
    assert not watch.dialogs and not watch.errors


def _goals_counted(httpx, server) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("pcrules_goals_total")))


# --------------------------------------------------------------------------- the CSR console shows the real state


def _row_status(csr, work_id: str, status: str, timeout: float = 10_000):
    """Wait until the console's row of `work_id` among the other offers says `status`; return the row's text."""
    row = csr.wait_for_selector(f'#offers tr[data-work-id="{work_id}"][data-status="{status}"]', timeout=timeout)
    return row.inner_text()


def _offered_page(ctx, url: str):
    """A new page of `ctx` on Bill Payment, once the pop-up offers a chat."""
    page = ctx.new_page()
    page.goto(url + "/demo/bill-payment.html")
    page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
    return page


def _accepted_chat(browser, server):
    """A new visitor who accepts the Bill Payment offer: (context, page, work id)."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    page = _offered_page(ctx, server.url)
    page.click("#pega-proactive-popup .pega-accept")
    page.wait_for_selector("#pega-chat-window")
    page.wait_for_function("() => window.pcrules.state.workId")
    return ctx, page, state(page)["workId"]


def test_the_csr_closes_a_chat_and_so_can_the_visitor(browser, server, tmp_path):
    ctx, page, work_id = _accepted_chat(browser, server)
    csr_ctx, csr, csr_watch, card = csr_card(browser, server, "Billing", work_id)
    try:
        close = card.query_selector("button.chat-close")
        assert close is not None and close.get_attribute("aria-label") == f"Close chat {work_id}"
        csr.screenshot(path=str(tmp_path / "csr-open.png"))
        close.click()
        csr.wait_for_selector(f'section[data-queue="Billing"] article.chat[data-work-id="{work_id}"]',
                              state="detached", timeout=5_000)
        assert "Bill Payment" in _row_status(csr, work_id, "Chat closed")
        work = json.loads(csr.request.get(server.url + "/demo/pega/work").text())["items"]
        assert [w["status"] for w in work if w["work_id"] == work_id] == ["Chat closed"]
        # a closed chat cannot be closed again, and only a chat can be closed
        again = csr.request.post(f"{server.url}/demo/pega/work/{work_id}/status", data={"status": "Chat closed"})
        assert again.status == 409
        csr.screenshot(path=str(tmp_path / "csr-closed.png"))

        other_ctx, other, other_id = _accepted_chat(browser, server)  # the visitor ends this one
        try:
            csr.wait_for_selector(f'article.chat[data-work-id="{other_id}"]', timeout=5_000)
            other.click("#pega-chat-window .pega-chat-close")
            other.wait_for_selector("#pega-chat-window", state="detached")
            csr.wait_for_selector(f'article.chat[data-work-id="{other_id}"]', state="detached", timeout=5_000)
            _row_status(csr, other_id, "Chat closed")
        finally:
            other_ctx.close()
        assert not csr_watch.errors and not csr_watch.dialogs
    finally:
        csr_ctx.close()
        ctx.close()


def test_offers_that_expire_or_whose_page_went_away_do_not_stay_offered(browser, tmp_path):
    # the no-answer cooldown keeps the withdrawn pop-up from coming back 0.1 s later (issue 17 item 5)
    rules = {**RULES, "policy": {**RULES["policy"], "offer_timeout_s": 2, "no_answer_cooldown_s": 120},
             "rules": [{**RULES["rules"][0], "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 1}}}]}
    with demo_server(tmp_path, rules, TOKEN) as srv:
        csr_ctx = browser.new_context(viewport={"width": 1200, "height": 800})
        csr = csr_ctx.new_page()
        csr_watch = Watch(csr)
        csr.goto(srv.url + "/demo/csr.html")
        csr.wait_for_selector('body[data-loaded="1"]')
        ctx = browser.new_context()
        try:
            # 1. nobody answers: the stand-in withdraws the pop-up after the wait time, the console says so
            page = _offered_page(ctx, srv.url)
            work_id = _newest_work_id(csr, srv)
            text = _row_status(csr, work_id, "Offered", timeout=2_000)
            assert "expires in" in text or "expiring" in text
            page.wait_for_selector("#pega-proactive-popup", state="detached", timeout=5_000)
            assert "Bill Payment" in _row_status(csr, work_id, "No response", timeout=5_000)
            page.wait_for_timeout(2_500)  # longer than the page's re-check: the offer is not made again at once
            assert page.query_selector("#pega-proactive-popup") is None
            page.close()

            # 2. the visitor leaves the page while the pop-up is up: "Page closed", at once
            other = browser.new_context()
            try:
                page = _offered_page(other, srv.url)
                work_id = _newest_work_id(csr, srv)
                page.goto(srv.url + "/demo/")
                _row_status(csr, work_id, "Page closed", timeout=1_900)  # before the wait time could end it
            finally:
                other.close()

            # 3. a page that vanished without a word (no pagehide): the server closes the offer after the wait time
            created = csr.request.post(srv.url + "/demo/pega/work", data={
                "queue": "Billing", "metadata": {"pxResults": [{"Name": "Page Name", "Value": "Gone"}]}})
            assert created.status == 201
            silent = created.json()["work_id"]
            _row_status(csr, silent, "Offered", timeout=2_000)
            _row_status(csr, silent, "No response", timeout=12_000)
            csr.screenshot(path=str(tmp_path / "csr-ended.png"))
            statuses = {w["status"] for w in json.loads(csr.request.get(srv.url + "/demo/pega/work").text())["items"]}
            assert "Offered" not in statuses
            assert not csr_watch.errors and not csr_watch.dialogs
        finally:
            ctx.close()
            csr_ctx.close()


def _newest_work_id(csr, srv) -> str:
    items = json.loads(csr.request.get(srv.url + "/demo/pega/work").text())["items"]
    return items[-1]["work_id"]
