// CSR console of the demo: lists the stand-in Pega server's proactive-chat work items per queue.
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

  function chatCard(item) {
    var card = el("article", "chat");
    card.setAttribute("data-work-id", item.work_id);
    var head = el("header", "chat-head");
    head.appendChild(el("span", "work-id", item.work_id));
    head.appendChild(el("time", null, new Date(item.updated_at * 1000).toLocaleTimeString()));
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

  function render(data) {
    var queues = document.getElementById("queues");
    var byQueue = Object.create(null);  // no prototype: a queue named "__proto__" or "constructor" is just a name
    data.queues.forEach(function (q) { byQueue[q] = []; });
    var others = [];
    data.items.forEach(function (item) {
      if (item.status === "Accepted by customer") (byQueue[item.queue] = byQueue[item.queue] || []).push(item);
      else others.push(item);
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
      [item.work_id, item.queue, item.status, pageOf(item)].forEach(function (text) { row.appendChild(el("td", null, text)); });
      return row;
    });
    var body = document.getElementById("offers");
    body.replaceChildren.apply(body, rows);
    document.getElementById("updated").textContent = "Last update " + new Date().toLocaleTimeString() + ".";
    document.body.setAttribute("data-loaded", "1");
  }

  function refresh() {
    fetch("/demo/pega/work", { credentials: "same-origin" }).then(function (r) { return r.json(); })
      .then(render, function () {})
      .then(function () { setTimeout(refresh, 1000); });
  }
  document.addEventListener("DOMContentLoaded", refresh);
})();
