// The search page names itself after the query ("Search: <query>"): whatever the visitor typed becomes the
// page name that pcrules sees, so it must come back everywhere as plain text.
(function () {
  "use strict";
  var q = new URLSearchParams(location.search).get("q") || "";
  var name = ("Search: " + q).slice(0, 200);
  document.querySelector('meta[name="pcrules-page"]').setAttribute("content", name);
  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("query").textContent = q;
    document.getElementById("q").value = q;
  });
})();
