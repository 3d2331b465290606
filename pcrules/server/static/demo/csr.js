// CSR console of the demo: lists the stand-in Pega server's proactive-chat work items per queue.
// An accepted chat shows as a card with a Close button (the chat ends: "Chat closed"); every other work item is a
// row of "Other offers" with its real state, as the stand-in server reports it each second: "Offered" (with the
// time left), the visitor's answer, "No response" (the wait time ran out), "Page closed" (the visitor left the
// page), "Chat closed".
// Metadata values arrive HTML-escaped (Pega's CSR window renders HTML): they are unescaped and shown with
// textContent, so the CSR sees exactly what the visitor's page held and nothing in it is ever parsed as HTML.
(function () {
  "use strict";

  function unescapeHtml(text) {
    return String(text).replace(/&(lt|gt|quot|#x27|#39|amp);/g, function (m, name) {
      return { lt: "<", gt: ">", quot: '"', "#x27": "'", "#39": "'", amp: "&" }[name];
    });
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function pageOf(item) {
    var pairs = item.metadata.pxResults || [];
    for (var i = 0; i < pairs.length; i++) if (pairs[i].Name === "Page Name") return unescapeHtml(pairs[i].Value);
    return "";
  }

  var closing = Object.create(null);  // work ids whose Close was clicked, until the server says so

  function closeChat(workId, button) {
    button.disabled = true;
    closing[workId] = true;
    fetch("/demo/pega/work/" + encodeURIComponent(workId) + "/status", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ status: "Chat closed" })
    }).then(function () { refreshNow(); }, function () { delete closing[workId]; button.disabled = false; });
  }

  function chatCard(item) {
    var card = el("article", "chat");
    card.setAttribute("data-work-id", item.work_id);
    var head = el("header", "chat-head");
    head.appendChild(el("span", "work-id", item.work_id));
    head.appendChild(el("time", null, new Date(item.updated_at * 1000).toLocaleTimeString()));
    var close = el("button", "chat-close", "\u00d7");
    close.type = "button";
    close.title = "Close the chat";
    close.setAttribute("aria-label", "Close chat " + item.work_id);
    close.addEventListener("click", function () { closeChat(item.work_id, close); });
    head.appendChild(close);
    card.appendChild(head);
    var table = el("table", "metadata");
    (item.metadata.pxResults || []).forEach(function (pair) {
      var row = el("tr");
      row.appendChild(el("th", null, unescapeHtml(pair.Name)));
      var value = el("td", null, unescapeHtml(pair.Value));
      value.setAttribute("data-name", unescapeHtml(pair.Name));
      row.appendChild(value);
      table.appendChild(row);
    });
    card.appendChild(table);
    return card;
  }

  function statusText(item, waitS) {
    if (item.status !== "Offered") return item.status;
    var left = Math.max(0, Math.round(item.created_at + waitS - Date.now() / 1000));
    return "Offered (" + (left > 0 ? "expires in " + left + " s" : "expiring") + ")";
  }

  function render(data) {
    var queues = document.getElementById("queues");
    var byQueue = Object.create(null);  // no prototype: a queue named "__proto__" or "constructor" is just a name
    data.queues.forEach(function (q) { byQueue[q] = []; });
    var others = [];
    var waitS = Number(data.wait_time_s) || 60;
    data.items.forEach(function (item) {
      if (item.status === "Accepted by customer" && !closing[item.work_id]) {
        (byQueue[item.queue] = byQueue[item.queue] || []).push(item);
      } else {
        if (item.status !== "Accepted by customer") delete closing[item.work_id];
        others.push(item);
      }
    });
    var sections = [];
    Object.keys(byQueue).forEach(function (q) {
      var section = el("section", "queue");
      section.setAttribute("data-queue", q);
      section.appendChild(el("h2", null, q + " (" + byQueue[q].length + ")"));
      var list = el("div", "chats");
      byQueue[q].slice().reverse().forEach(function (item) { list.appendChild(chatCard(item)); });
      if (!byQueue[q].length) list.appendChild(el("p", "empty", "No chats waiting."));
      section.appendChild(list);
      sections.push(section);
    });
    queues.replaceChildren.apply(queues, sections);
    var rows = others.slice().reverse().map(function (item) {
      var row = el("tr");
      row.setAttribute("data-work-id", item.work_id);
      row.setAttribute("data-status", item.status);
      [item.work_id, item.queue, statusText(item, waitS), pageOf(item),
       new Date(item.updated_at * 1000).toLocaleTimeString()].forEach(function (text, i) {
        var cell = el("td", null, text);
        if (i === 2) cell.className = item.status === "Offered" ? "status-open" : "status-ended";
        row.appendChild(cell);
      });
      return row;
    });
    var body = document.getElementById("offers");
    body.replaceChildren.apply(body, rows);
    document.getElementById("updated").textContent = "Last update " + new Date().toLocaleTimeString() + ".";
    document.body.setAttribute("data-loaded", "1");
  }

  var timer = null;
  function refresh() {
    timer = null;
    fetch("/demo/pega/work", { credentials: "same-origin" }).then(function (r) { return r.json(); })
      .then(render, function () {})
      .then(function () { if (timer === null) timer = setTimeout(refresh, 1000); });
  }
  function refreshNow() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    refresh();
  }
  document.addEventListener("DOMContentLoaded", refresh);
})();
