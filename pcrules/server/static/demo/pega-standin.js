/*
 * A stand-in for Pega Customer Service's pega.chat.proactiveChat, behaving as a real Pega page does
 * (see the project's notes on the Pega client):
 *
 * - window.pega.chat.proactiveChat is created when the DOM is ready; it is an event emitter
 *   (on(name, fn, context), off(name, fn), trigger(name, data...)) with exactly the three documented calls:
 *   offer(queueName, metadata, bDefaultUI), accept(), decline();
 * - offer() first asks the server whether an agent is available in the queue (GetAgentAvailability, plain
 *   text "true"/"false"); only on "true" does it remember queue, metadata and UI choice and load the offer:
 *   otherwise nothing is shown and no event says so;
 * - bDefaultUI defaults to true: only an explicit false hides the default pop-up (the page draws its own);
 * - events: proactivechat-ready (offer loaded), proactivechat-accepted (data carries WorkId),
 *   proactivechat-declined, proactivechat-not-ready (could not load);
 * - accept() / decline() set the work item's status to "Accepted by customer" / "Declined by customer";
 *   the pop-up's own buttons call them, and the page learns the answer only from the events;
 * - the metadata goes to the CSR as {"pxResults": [{"Name": key, "Value": value}, ...]};
 * - the pop-up is withdrawn after the wait time (configured on the Pega side) with no event; the work item
 *   becomes "No response" (the CSR console shows it);
 * - leaving the page with the pop-up open withdraws it: the work item becomes "Page closed" (sent with keepalive,
 *   as the page goes away); a page that vanishes without a word is closed by the server after the wait time;
 * - the visitor's chat window has a close button: the chat ends ("Chat closed"), in the CSR console too.
 *
 * Metadata values arrive HTML-escaped (the CSR's window renders HTML): they are unescaped and shown with
 * textContent, so whatever a page name holds is displayed as text and never parsed.
 */
(function () {
  "use strict";

  var me = document.currentScript;
  var server = ((me && me.getAttribute("data-pega-server")) || "/demo/pega").replace(/\/+$/, "");
  var waitTimeS = 60;
  fetch(server + "/config").then(function (r) { return r.json(); }).then(function (c) {
    if (c && c.wait_time_s > 0) waitTimeS = c.wait_time_s;
  }, function () {});

  function unescapeHtml(text) {
    return String(text).replace(/&(lt|gt|quot|#x27|#39|amp);/g, function (m, name) {
      return { lt: "<", gt: ">", quot: '"', "#x27": "'", "#39": "'", amp: "&" }[name];
    });
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function postJSON(url, body, keepalive) {
    return fetch(url, {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), keepalive: !!keepalive
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  // ------------------------------------------------------------------ the event emitter

  function Emitter() { this.listenerStore = {}; }
  Emitter.prototype.on = function (name, fn, context) {
    (this.listenerStore[name] = this.listenerStore[name] || []).push({ fn: fn, context: context });
    return this;
  };
  Emitter.prototype.off = function (name, fn) {
    var list = this.listenerStore[name];
    if (!list) return this;
    if (!fn) { delete this.listenerStore[name]; return this; }
    for (var i = 0; i < list.length; i++) {
      if (list[i].fn === fn) { list.splice(i, 1); break; }
    }
    if (!list.length) delete this.listenerStore[name];
    return this;
  };
  Emitter.prototype.trigger = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    var list = (this.listenerStore[name] || []).slice(0);
    for (var i = 0; i < list.length; i++) {
      try { list[i].fn.apply(list[i].context || this, args); } catch (e) { if (window.console) console.error(e); }
    }
    return this;
  };

  // ------------------------------------------------------------------ proactiveChat

  function ProactiveChat() {
    Emitter.call(this);
    this.defaultUI = true;
    this.queueName = null;
    this.metadata = null;
    this.workId = null;
  }
  ProactiveChat.prototype = Object.create(Emitter.prototype);
  ProactiveChat.prototype.constructor = ProactiveChat;

  var popup = null;
  var withdrawTimer = null;
  var pendingWork = null;  // the loaded offer's work item, until answered

  function toPxResults(metadata) {
    var out = [];
    Object.keys(metadata || {}).forEach(function (key) {
      out.push({ Name: String(key), Value: String(metadata[key]) });
    });
    return { pxResults: out };
  }

  function removePopup() {
    if (withdrawTimer) { clearTimeout(withdrawTimer); withdrawTimer = null; }
    if (popup && popup.parentNode) popup.parentNode.removeChild(popup);
    popup = null;
  }

  function showPopup(api, work) {
    removePopup();
    var pairs = work.metadata.pxResults;
    var pageName = null;
    pairs.forEach(function (p) { if (p.Name === "Page Name") pageName = unescapeHtml(p.Value); });
    var box = el("div", "pega-proactive");
    box.id = "pega-proactive-popup";
    box.setAttribute("role", "dialog");
    box.setAttribute("aria-label", "Chat offer");
    box.appendChild(el("h2", "pega-proactive-title", "Need a hand?"));
    box.appendChild(el("p", "pega-proactive-lead",
      pageName !== null ? "An agent can help you with " + pageName + "." : "An agent can help you now."));
    var dl = el("dl", "pega-proactive-details");
    pairs.forEach(function (p) {
      dl.appendChild(el("dt", null, unescapeHtml(p.Name)));
      dl.appendChild(el("dd", null, unescapeHtml(p.Value)));
    });
    box.appendChild(dl);
    var actions = el("div", "pega-proactive-actions");
    var accept = el("button", "pega-accept", "Accept");
    accept.type = "button";
    accept.addEventListener("click", function () { api.accept(); });
    var decline = el("button", "pega-decline", "Decline");
    decline.type = "button";
    decline.addEventListener("click", function () { api.decline(); });
    actions.appendChild(accept);
    actions.appendChild(decline);
    box.appendChild(actions);
    document.body.appendChild(box);
    popup = box;
    box.setAttribute("data-shown-at", String(performance.now()));
  }

  function statusURL(work) {
    return server + "/work/" + encodeURIComponent(work.work_id) + "/status";
  }

  function showChat(work) {
    var box = el("div", "pega-chat");
    box.id = "pega-chat-window";
    box.setAttribute("role", "status");
    var head = el("div", "pega-chat-head");
    head.appendChild(el("h2", "pega-chat-title", "Chat"));
    var close = el("button", "pega-chat-close", "\u00d7");
    close.type = "button";
    close.title = "End the chat";
    close.setAttribute("aria-label", "End the chat");
    close.addEventListener("click", function () {
      if (box.parentNode) box.parentNode.removeChild(box);
      postJSON(statusURL(work), { status: "Chat closed" }).catch(function () {});
    });
    head.appendChild(close);
    box.appendChild(head);
    box.appendChild(el("p", null, "Connecting you to an agent in " + work.queue + "… (" + work.work_id + ")"));
    document.body.appendChild(box);
  }

  ProactiveChat.prototype.offer = function (queueName, metadata, bDefaultUI) {
    var self = this;
    if (pendingWork) return;  // one offer on screen at a time
    fetch(server + "/GetAgentAvailability/" + encodeURIComponent(queueName), {
      credentials: "same-origin", headers: { "Content-Type": "text/plain" }
    }).then(function (r) { return r.text(); }).then(function (text) {
      if (text !== "true") return;  // no agent: nothing shown, no event
      self.queueName = queueName;
      self.defaultUI = bDefaultUI === false ? false : true;
      self.metadata = metadata || {};
      return postJSON(server + "/work", { queue: queueName, metadata: toPxResults(self.metadata) }).then(function (work) {
        pendingWork = work;
        if (self.defaultUI) showPopup(self, work);
        withdrawTimer = setTimeout(function () {  // the wait time ran out: withdrawn, no event
          var w = pendingWork;
          pendingWork = null;
          removePopup();
          if (w) postJSON(statusURL(w), { status: "No response" }).catch(function () {});
        }, waitTimeS * 1000);
        self.trigger("proactivechat-ready", { command: "ProactiveChatStatus", status: "loaded" });
      }, function () {
        self.trigger("proactivechat-not-ready", { command: "ProactiveChatStatus", status: "not-loaded" });
      });
    }, function () { /* Pega unreachable: nothing shown */ });
  };

  function setStatus(self, status, event, after) {
    var work = pendingWork;
    if (!work) return;
    pendingWork = null;
    removePopup();
    postJSON(statusURL(work), { status: status }).then(function (w) {
      after(w);
      self.trigger(event, { command: "ProactiveChatStatus", status: event.replace("proactivechat-", ""), WorkId: w.work_id });
    }, function () {});
  }

  ProactiveChat.prototype.accept = function () {
    var self = this;
    setStatus(self, "Accepted by customer", "proactivechat-accepted", function (w) { self.workId = w.work_id; showChat(w); });
  };

  ProactiveChat.prototype.decline = function () {
    setStatus(this, "Declined by customer", "proactivechat-declined", function () {});
  };

  // Leaving the page with the pop-up open: the offer is withdrawn, and Pega's work item says so.
  window.addEventListener("pagehide", function () {
    var work = pendingWork;
    if (!work) return;
    pendingWork = null;
    removePopup();
    postJSON(statusURL(work), { status: "Page closed" }, true).catch(function () {});
  });

  function create() {
    window.pega = window.pega || {};
    window.pega.chat = window.pega.chat || {};
    window.pega.chat.proactiveChat = new ProactiveChat();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", create);
  else create();
})();
