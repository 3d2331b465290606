"""Hostile text in a real browser: page names and offer metadata show as text in the pop-up and the CSR console,
and the decision's js_call stays inside its <script> element. No script of theirs ever runs.

Debian's chromium through Playwright (see test_browser_demo.py), against `pcrules serve --demo` with a rule that
offers on any "Search: ..." page after 1 s, so the visitor's query becomes the page name and the metadata.
Every page is watched for dialogs (alert/confirm/prompt), page errors and console errors; most contexts run
with the Content-Security-Policy bypassed, so that the escaping, not the policy, is what is tested.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid

import httpx
import pytest

from browser import Watch, chromium, demo_server, state

pytestmark = pytest.mark.browser

HOSTILE = [
    "<img src=x onerror=alert('img')>",
    "</script><script>alert('script')</script>",
    "\"'><svg onload=alert('svg')>",
    "javascript:alert('js')",
    "<a href=\"javascript:alert('href')\">click</a><iframe srcdoc=\"<script>alert('frame')</script>\"></iframe>",
    "{{constructor.constructor('alert(1)')()}} ${alert('tpl')} `${alert('tick')}`",
    "&lt;script&gt;alert('entity')&lt;/script&gt; &amp; &#x27; \u2028\u2029 line separators",
    "<!-- <script>alert('comment')</script> --> ]]> <![CDATA[",
]
ELEMENTS = "img, script, svg, iframe, a, b, object, embed"

RULES = {
    "name": "security-browser",
    "policy": {"max_offers_per_session": 3, "decline_cooldown_s": 60, "offer_timeout_s": 60, "holdout": 0.0,
               "session_idle_ttl_s": 1800},
    "queues": {"Billing": {"max_wait_s": 180}, "Support": {"max_wait_s": 300}},
    "rules": [{"name": "searcher", "priority": 10,
               "when": {"page": {"matches": "^Search"}, "seconds_on_page": {"gte": 1}},
               "offer": {"queue": "Support", "default_ui": True,
                         "metadata": {"Page Name": "{page}", "You were reading": "Results for {page}",
                                      "Device": "{device}"}}}],
}
TOKEN = "security-browser-operator-token"


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with demo_server(tmp_path_factory.mktemp("security"), RULES, TOKEN) as srv:
        yield srv


def page_name(query: str) -> str:
    """What the snippet sends for the search page (search.js names it; pcrules.js cuts it at 200)."""
    return ("Search: " + query)[:200]


def assert_clean(watch: Watch, where: str) -> None:
    assert watch.dialogs == [], f"{where}: a dialog opened: {watch.dialogs}"
    assert watch.errors == [], f"{where}: errors: {watch.errors}"


def test_hostile_page_names_show_as_text_in_the_popup_and_the_csr_console(browser, server):
    contexts, pages = [], []
    try:
        for i, query in enumerate(HOSTILE):  # all at once: each tab is a visitor waiting for its offer
            ctx = browser.new_context(bypass_csp=i % 4 != 0)  # every fourth under the real policy
            page = ctx.new_page()
            watch = Watch(page)
            answers: list = []
            page.on("request", lambda r, answers=answers: "/v1/offers/" in r.url and answers.append(r.post_data_json))
            page.goto(server.url + "/demo/search.html?q=" + urllib.parse.quote(query))
            contexts.append(ctx)
            pages.append((query, page, watch, answers))
        work = {}
        for query, page, watch, answers in pages:
            name = page_name(query)
            popup = page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
            assert popup.query_selector(".pega-proactive-lead").text_content() == f"An agent can help you with {name}."
            shown = {dt.text_content(): dd.text_content() for dt, dd in zip(popup.query_selector_all("dt"),
                                                                             popup.query_selector_all("dd"))}
            assert shown["Page Name"] == name and shown["You were reading"] == f"Results for {name}", query
            assert popup.query_selector_all(ELEMENTS) == [], query
            assert page.query_selector("#query").text_content() == query  # the page's own echo, as text too
            page.click("#pega-proactive-popup .pega-accept")
            page.wait_for_function("() => window.pcrules.state.lastAnswer && window.pcrules.state.workId")
            s = state(page)
            assert s["lastAnswer"] == {"answer": "accept", "status": 200}
            # the answer names its visitor and session: the server accepts it from this visitor only
            assert answers == [{"visitor_id": s["visitorId"], "session_id": s["sessionId"]}]
            work[s["workId"]] = name
            page.wait_for_timeout(100)
            assert page.evaluate("() => document.querySelectorAll('img, svg, iframe').length") == 0
            assert_clean(watch, f"pop-up for {query!r}")

        for bypass in (True, False):
            ctx = browser.new_context(bypass_csp=bypass)
            contexts.append(ctx)
            csr = ctx.new_page()
            watch = Watch(csr)
            csr.goto(server.url + "/demo/csr.html")
            for work_id, name in work.items():
                card = csr.wait_for_selector(f'section[data-queue="Support"] article[data-work-id="{work_id}"]',
                                             timeout=10_000)
                assert card.query_selector('td[data-name="Page Name"]').text_content() == name
                assert card.query_selector('td[data-name="You were reading"]').text_content() == f"Results for {name}"
            csr.wait_for_timeout(1200)  # a refresh or two of the console: still nothing runs
            assert csr.query_selector_all(f"#queues :is({ELEMENTS}), #offers :is({ELEMENTS})") == []
            assert_clean(watch, "CSR console")
    finally:
        for ctx in contexts:
            ctx.close()


def as_shown(text: str) -> str:
    """The stand-in unescapes the five entities the runtime's HTML escaping makes (values reach Pega escaped),
    then shows the result as text."""
    names = {"lt": "<", "gt": ">", "quot": '"', "#x27": "'", "#39": "'", "amp": "&"}
    return re.sub(r"&(lt|gt|quot|#x27|#39|amp);", lambda m: names[m.group(1)], text)


def test_hostile_metadata_given_to_offer_shows_as_text(browser, server):
    metadata = {f"{p} #{i}": p for i, p in enumerate(HOSTILE)}
    metadata.update({"constructor": "toString", "<b onmouseover=alert('key')>key</b>": "javascript:alert('v')"})
    shown = {as_shown(k): as_shown(v) for k, v in metadata.items()}
    ctx = browser.new_context(bypass_csp=True)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(server.url + "/demo/")  # Home: no rule; the snippet stops and the page offers by itself
        page.wait_for_function("() => window.pcrules.state.stopped !== null")
        page.evaluate("(md) => pega.chat.proactiveChat.offer('Billing', md, true)", metadata)
        popup = page.wait_for_selector("#pega-proactive-popup", timeout=10_000)
        names = [dt.text_content() for dt in popup.query_selector_all("dt")]
        values = [dd.text_content() for dd in popup.query_selector_all("dd")]
        assert dict(zip(names, values)) == shown
        assert popup.query_selector_all(ELEMENTS) == []
        popup.query_selector(".pega-proactive-details").hover()
        page.click("#pega-proactive-popup .pega-accept")
        page.wait_for_selector("#pega-chat-window")
        work_id = page.evaluate("() => pega.chat.proactiveChat.workId")
        page.wait_for_timeout(200)
        assert_clean(watch, "pop-up with hostile metadata")

        csr = ctx.new_page()
        csr_watch = Watch(csr)
        csr.goto(server.url + "/demo/csr.html")
        card = csr.wait_for_selector(f'section[data-queue="Billing"] article[data-work-id="{work_id}"]',
                                     timeout=10_000)
        rows = {th.text_content(): td.text_content()
                for th, td in zip(card.query_selector_all("th"), card.query_selector_all("td"))}
        assert rows == shown
        for td in card.query_selector_all("td"):
            assert td.get_attribute("data-name") in shown
        card.hover()
        csr.wait_for_timeout(1200)
        assert csr.query_selector_all(f"#queues :is({ELEMENTS})") == []
        assert_clean(csr_watch, "CSR console with hostile metadata")
    finally:
        ctx.close()


def test_js_call_stays_inside_its_script_element_and_passes_the_metadata_unchanged(browser, server):
    """The decision's js_call for hostile page names, pasted into an HTML page's <script> (what a server-side
    integration would do): the HTML parser sees one script, JavaScript gets exactly the metadata of the JSON."""
    decisions = []
    with httpx.Client(base_url=server.url) as client:
        for query in HOSTILE:
            d = client.post("/v1/observe", json={"visitor_id": uuid.uuid4().hex, "session_id": "s",
                                                 "page": page_name(query), "seconds_on_page": 2}).json()
            assert d["action"] == "offer", d
            assert "<" not in d["js_call"] and "\u2028" not in d["js_call"] and "\u2029" not in d["js_call"]
            decisions.append(d)
    stub = ("<script>window.got = []; window.pega = {chat: {proactiveChat: {offer: function (q, m, ui) "
            "{ window.got.push([q, m, ui]); }}}};</script>")
    body = "".join(f"<script>{d['js_call']}</script>\n<div class='attr' data-call='{d['js_call']}'></div>\n"
                   for d in decisions)
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.set_content(f"<!doctype html><html><head>{stub}</head><body>{body}<p id='end'>end</p></body></html>")
        assert page.evaluate("() => document.scripts.length") == 1 + len(decisions)  # no </script> broke out
        got = page.evaluate("() => window.got")
        assert got == [[d["queue"], d["metadata"], d["default_ui"]] for d in decisions]
        for d in decisions:  # the metadata is HTML-escaped text: a page putting it into HTML shows the characters
            assert "<" not in json.dumps(d["metadata"])
        attrs = page.evaluate("() => [...document.querySelectorAll('div.attr')].map(e => e.getAttribute('data-call'))")
        assert attrs == [d["js_call"] for d in decisions]  # also whole inside a single-quoted attribute
        assert page.evaluate("() => document.querySelectorAll('img, svg, iframe, a').length") == 0
        assert page.text_content("#end") == "end"
        assert_clean(watch, "js_call in <script>")
    finally:
        ctx.close()


def test_the_snippet_backs_off_on_429_and_sends_an_answer_again(browser, server):
    """A rate-limited observation is asked again later; a rate-limited answer is sent once more, not lost."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        watch = Watch(page)
        calls = {"observe": [], "answer": []}
        limited = json.dumps({"error": "rate_limited", "message": "too many requests", "limit": "per_visitor",
                              "retry_after_s": 1})

        def throttle_first(kind):
            def handle(route):
                calls[kind].append(time.monotonic())
                if len(calls[kind]) == 1:
                    route.fulfill(status=429, body=limited, content_type="application/json",
                                  headers={"Retry-After": "1"})
                else:
                    route.continue_()
            return handle

        page.route("**/v1/observe", throttle_first("observe"))
        page.route("**/v1/offers/**", throttle_first("answer"))
        page.goto(server.url + "/demo/search.html?q=throttled")
        page.wait_for_selector("#pega-proactive-popup", timeout=15_000)
        assert len(calls["observe"]) >= 2 and calls["observe"][1] - calls["observe"][0] >= 1.9  # backed off 2 s
        page.click("#pega-proactive-popup .pega-accept")
        page.wait_for_function("() => window.pcrules.state.lastAnswer", timeout=10_000)
        assert state(page)["lastAnswer"] == {"answer": "accept", "status": 200}
        assert len(calls["answer"]) == 2 and calls["answer"][1] - calls["answer"][0] >= 0.9
        assert watch.dialogs == []
        assert [e for e in watch.errors if "429" not in e] == []  # the browser logs the 429s themselves
    finally:
        ctx.close()
