/* iterflow dashboard: live status updates (SSE, falling back to polling /changes). No inline
   script (the CSP forbids it), no framework, no network access beyond this dashboard. */
(function () {
  "use strict";
  var root = document.body.getAttribute("data-root") || "";
  var runPage = document.querySelector(".run[data-run-id]");
  var runId = runPage ? runPage.getAttribute("data-run-id") : null;
  var listed = document.querySelector("table#runs");
  if (!runId && !listed) { return; }

  function setStatus(el, status) {
    if (!el || el.textContent === status) { return false; }
    el.textContent = status;
    if (el.classList.contains("status")) { el.className = "status status-" + status; }
    return true;
  }

  function apply(change) {
    if (!change || !change.run_id || !change.status) { return; }
    if (runId) {
      if (change.run_id !== runId) { return; }
      var el = document.querySelector('[data-testid="run-status"]');
      if (setStatus(el, change.status)) { noteReload(); }
      return;
    }
    var rows = document.querySelectorAll('tr[data-run-id="' + change.run_id + '"]');
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i];
      var cell = row.querySelector('[data-testid="run-status"]');
      if (setStatus(cell, change.status)) {
        row.setAttribute("data-status", change.status);
        row.classList.remove("changed");
        void row.offsetWidth;  /* restart the highlight animation */
        row.classList.add("changed");
      }
    }
  }

  function noteReload() {
    if (document.getElementById("live-note")) { return; }
    var el = document.querySelector('[data-testid="run-status"]');
    if (!el || !el.parentNode) { return; }
    var note = document.createElement("a");
    note.id = "live-note";
    note.className = "live-note";
    note.href = window.location.href;
    note.textContent = "changed: reload for details";
    el.parentNode.appendChild(note);
  }

  /* the change token the page was rendered at: changes after it are replayed on connect */
  var holder = document.querySelector("[data-since]");
  var since = holder ? holder.getAttribute("data-since") : "";
  var params = [];
  if (runId) { params.push("run=" + encodeURIComponent(runId)); }
  if (since) { params.push("since=" + encodeURIComponent(since)); }
  var query = params.length ? "?" + params.join("&") : "";
  var polling = false;
  var lastToken = since;

  function poll(token) {
    polling = true;
    var url = root + "/changes?since=" + encodeURIComponent(token) +
      (runId ? "&run=" + encodeURIComponent(runId) : "");
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (body) {
        (body.runs || []).forEach(apply);
        window.setTimeout(function () { poll(body.token); }, 3000);
      })
      .catch(function () { window.setTimeout(function () { poll(token); }, 10000); });
  }

  function startPolling() {
    if (polling) { return; }
    document.documentElement.setAttribute("data-live", "poll");
    if (lastToken) { poll(lastToken); return; }
    fetch(root + "/changes", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (body) { poll(body.token); })
      .catch(function () { window.setTimeout(startPolling, 10000); });
  }

  if (!window.EventSource) { startPolling(); return; }
  var source = new EventSource(root + "/events" + query);
  var failures = 0;
  source.addEventListener("run", function (ev) {
    failures = 0;
    if (ev.lastEventId) { lastToken = ev.lastEventId; }
    try { apply(JSON.parse(ev.data)); } catch (e) { /* ignore a malformed message */ }
  });
  source.addEventListener("open", function () { failures = 0; });
  source.addEventListener("error", function () {
    failures += 1;
    if (source.readyState === EventSource.CLOSED || failures >= 3) {
      source.close();
      startPolling();
    }
  });
  document.documentElement.setAttribute("data-live", "sse");
})();
