/*
 * pcrules browser snippet: asks the pcrules server when to offer a proactive chat, and offers it through
 * pega.chat.proactiveChat.offer(queue, metadata, defaultUI).
 *
 *   <meta name="pcrules-page" content="Bill Payment">            (else data-page on this tag, else the title)
 *   <script src="/static/pcrules.js" defer data-endpoint="/v1"></script>
 *
 * - time on page counts only while the tab is visible (it pauses while hidden);
 * - it asks again after the server's recheck_after (in visible time), never on a fixed beat;
 * - an offer goes to pega.chat.proactiveChat.offer(); the visitor's answer is learnt from Pega's
 *   proactivechat-accepted / -declined events (with Pega's default UI the page sees nothing else) and
 *   reported to the server; proactivechat-not-ready, a page left with the offer open, and the wait time
 *   running out are reported as expire;
 * - an answer names the offer's visitor and session (the server refuses anyone else's); on 429 / 503 it is sent
 *   once more after the server's retry_after_s, and observations back off;
 * - one offer at a time; it stops for the session once the server says max_offers, in_chat or holdout.
 * No build step, no dependencies, no inline script needed; visitor text is never turned into HTML.
 */
(function () {
  "use strict";

  var me = document.currentScript;
  var endpoint = ((me && me.getAttribute("data-endpoint")) || "/v1").replace(/\/+$/, "");
  var PREFIX = "pcrules.";
  var STOP_SESSION = { max_offers: 1, in_chat: 1, holdout: 1 };
  var STOP_PAGE = { no_rule: 1, score_below: 1, cooldown: 1 };
  var RETRY_LATER = { queue_busy: 1, closed: 1, offer_pending: 1 };

  // ------------------------------------------------------------------ storage (private mode may refuse it)

  function storage(kind) {
    try {
      var s = window[kind];
      s.setItem(PREFIX + "probe", "1");
      s.removeItem(PREFIX + "probe");
      return s;
    } catch (e) {
      var mem = {};
      return {
        getItem: function (k) { return Object.prototype.hasOwnProperty.call(mem, k) ? mem[k] : null; },
        setItem: function (k, v) { mem[k] = String(v); },
        removeItem: function (k) { delete mem[k]; }
      };
    }
  }
  var local = storage("localStorage");
  var session = storage("sessionStorage");

  function randomId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    var out = "";
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return out;
  }

  var returning = local.getItem(PREFIX + "visitor") !== null && session.getItem(PREFIX + "session") === null;
  var visitorId = local.getItem(PREFIX + "visitor");
  if (!visitorId) { visitorId = randomId(); local.setItem(PREFIX + "visitor", visitorId); }
  var sessionId = session.getItem(PREFIX + "session");
  if (!sessionId) {
    sessionId = randomId();
    session.setItem(PREFIX + "session", sessionId);
    session.setItem(PREFIX + "started", String(Date.now()));
    session.setItem(PREFIX + "returning", returning ? "1" : "0");
  }
  var pagesViewed = (parseInt(session.getItem(PREFIX + "pages") || "0", 10) || 0) + 1;
  session.setItem(PREFIX + "pages", String(pagesViewed));

  function pageName() {
    var meta = document.querySelector('meta[name="pcrules-page"]');
    var name = (meta && meta.getAttribute("content")) || (me && me.getAttribute("data-page")) || document.title || location.pathname;
    return String(name).replace(/[\u0000-\u001f\u007f-\u009f]/g, " ").slice(0, 200);
  }

  function device() {
    var coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
    return coarse || window.innerWidth < 768 ? "mobile" : "desktop";
  }

  // ------------------------------------------------------------------ time on page, visible time only

  var visibleMs = 0;
  var visibleSince = document.visibilityState === "hidden" ? null : 0;  // performance.now() is 0 at navigation
  function secondsOnPage() {
    var ms = visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince);
    return Math.max(0, ms / 1000);
  }

  // One timer, counted in visible seconds: it is suspended while the tab is hidden.
  var timer = null;
  var dueAt = null;  // secondsOnPage() at which to ask again
  function askAfter(seconds) {
    dueAt = secondsOnPage() + Math.max(0, seconds);
    arm();
  }
  function arm() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    if (dueAt === null || visibleSince === null) return;
    var wait = Math.max(0, (dueAt - secondsOnPage()) * 1000) + 20;  // never a hair early
    timer = setTimeout(function () { timer = null; dueAt = null; ask(); }, wait);
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      if (visibleSince !== null) { visibleMs += performance.now() - visibleSince; visibleSince = null; }
    } else if (visibleSince === null) {
      visibleSince = performance.now();
    }
    arm();
  });

  // ------------------------------------------------------------------ talking to the server

  var state = {
    visitorId: visitorId, sessionId: sessionId, page: pageName(), requests: 0, decisions: [], offer: null,
    stopped: session.getItem(PREFIX + "stop") ? "session: " + session.getItem(PREFIX + "stop") : null,
    errors: 0
  };
  var inflight = false;

  function post(path, body, keepalive) {
    return fetch(endpoint + path, {
      method: "POST", credentials: "same-origin", keepalive: !!keepalive,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {})
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) { return { status: r.status, data: data }; });
    });
  }

  function event() {
    var started = parseInt(session.getItem(PREFIX + "started") || "0", 10) || Date.now();
    return {
      visitor_id: visitorId, session_id: sessionId, page: state.page,
      seconds_on_page: Math.round(secondsOnPage() * 1000) / 1000,
      pages_viewed: pagesViewed, session_seconds: Math.max(0, Math.round((Date.now() - started) / 1000)),
      device: device(), returning: session.getItem(PREFIX + "returning") === "1"
    };
  }

  var backoff = 0;
  function retryLater(base, cap) {
    backoff = backoff ? Math.min(backoff * 2, cap) : base;
    askAfter(backoff);
  }

  function ask() {
    if (state.stopped || inflight || state.offer) return;
    inflight = true;
    state.requests++;
    post("/observe", event()).then(function (r) {
      inflight = false;
      if (r.status >= 500 || r.status === 429) { state.errors++; retryLater(2, 60); return; }
      if (r.status !== 200) {
        state.stopped = "page: refused (" + r.status + " " + (r.data.message || "") + ")";
        if (window.console) console.warn("pcrules:", state.stopped);
        return;
      }
      decided(r.data);
    }, function () {
      inflight = false;
      state.errors++;
      retryLater(2, 60);
    });
  }

  function stop(scope, why) {
    state.stopped = scope + ": " + why;
    if (scope === "session") session.setItem(PREFIX + "stop", why);
  }

  function decided(d) {
    state.decisions.push({ action: d.action, reason: d.reason, at: secondsOnPage(), recheck_after: d.recheck_after });
    if (d.action === "wait") {
      backoff = 0;
      askAfter(Number(d.recheck_after) || 1);
    } else if (d.action === "offer") {
      backoff = 0;
      offer(d);
    } else if (STOP_SESSION[d.reason]) {
      stop("session", d.reason);
    } else if (RETRY_LATER[d.reason]) {
      retryLater(30, 300);
    } else {
      stop("page", d.reason || "none");
    }
  }

  // ------------------------------------------------------------------ the offer and the visitor's answer

  function chat() {
    return window.pega && window.pega.chat && window.pega.chat.proactiveChat;
  }

  function offer(d) {
    var timeoutS = Math.max(1, Number(d.expires_at) - Number(d.ts)) || 60;
    var current = { id: d.offer_id, queue: d.queue, defaultUI: d.default_ui !== false, ready: false, done: false,
                    shownAt: performance.now(), own: null, expiry: null };
    state.offer = current;
    current.expiry = setTimeout(function () { answer(current, "expire"); }, timeoutS * 1000);
    chat().offer(d.queue, d.metadata || {}, current.defaultUI);
  }

  function answer(current, what, keepalive) {
    if (!current || current.done) return;
    current.done = true;
    clearTimeout(current.expiry);
    if (current.own && current.own.parentNode) current.own.parentNode.removeChild(current.own);
    if (state.offer === current) state.offer = null;
    state.answered = (state.answered || []).concat([{ id: current.id, answer: what }]);
    // The offer's own visitor and session: the server refuses an answer from anyone else.
    var path = "/offers/" + encodeURIComponent(current.id) + "/" + what;
    var owner = { visitor_id: visitorId, session_id: sessionId };
    function send(retried) {
      return post(path, owner, keepalive).then(function (r) {
        if ((r.status === 429 || r.status === 503) && !retried && !keepalive) {  // once more, when the server says
          var wait = Math.min(10, Number(r.data.retry_after_s) || 1);
          return new Promise(function (done) { setTimeout(done, wait * 1000); }).then(function () { return send(true); });
        }
        state.lastAnswer = { answer: what, status: r.status };
        if (what === "accept") { stop("session", "in_chat"); return; }
        ask();  // the server decides what comes next (a cooldown, the session's limit ...)
      }, function () { state.errors++; });
    }
    return send(false);
  }

  // With defaultUI false Pega shows nothing: the page draws its own prompt and calls accept() / decline().
  function ownPrompt(current) {
    var box = document.createElement("div");
    box.className = "pcrules-prompt";
    box.setAttribute("role", "dialog");
    var text = document.createElement("p");
    text.textContent = "Would you like to chat with us?";
    box.appendChild(text);
    [["Chat now", "accept"], ["No thanks", "decline"]].forEach(function (b) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = b[0];
      button.addEventListener("click", function () { chat()[b[1]](); });
      box.appendChild(button);
    });
    current.own = box;
    document.body.appendChild(box);
  }

  function listen(api) {
    api.on("proactivechat-ready", function () {
      var current = state.offer;
      if (!current || current.ready) return;
      current.ready = true;
      if (!current.defaultUI) ownPrompt(current);
    });
    api.on("proactivechat-accepted", function (data) {
      state.workId = data && data.WorkId;
      answer(state.offer, "accept");
    });
    api.on("proactivechat-declined", function () { answer(state.offer, "decline"); });
    api.on("proactivechat-not-ready", function () { answer(state.offer, "expire"); });
  }

  window.addEventListener("pagehide", function () {
    if (state.offer) answer(state.offer, "expire", true);  // leaving the page withdraws the pop-up
  });

  // ------------------------------------------------------------------ start: Pega creates its API when the DOM is ready

  function start() {
    listen(chat());
    if (!state.stopped) ask();
  }
  var tries = 0;
  function whenPegaReady() {
    if (chat()) { start(); return; }
    if (++tries > 150) { if (window.console) console.warn("pcrules: pega.chat.proactiveChat never appeared"); return; }
    setTimeout(whenPegaReady, 100);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", whenPegaReady);
  else whenPegaReady();

  // A business outcome of this visit ("bill_paid" ...), so the server can tell whether its offers helped.
  // Sent with keepalive: a goal is often reached just before the page goes away. Resolves to true when recorded.
  function goal(name, value) {
    var body = { visitor_id: visitorId, session_id: sessionId, goal: String(name) };
    if (typeof value === "number" && isFinite(value)) body.value = value;
    return post("/goals", body, true).then(function (r) {
      state.goals = (state.goals || []).concat([{ goal: body.goal, status: r.status }]);
      return r.status === 202;
    }, function () { state.errors++; return false; });
  }

  window.pcrules = { state: state, secondsOnPage: secondsOnPage, goal: goal, version: "1" };
})();
