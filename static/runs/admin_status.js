/*
 * Live status of runs in the runs admin (changelist and change page).
 *
 * Every status and duration the admin renders carries data-run-id / data-run-field /
 * data-active and the URL of the status stream. This opens ONE EventSource for all active runs
 * on the page (one per row would exhaust the browser's connections per origin), patches each
 * `status` event into place, and closes the stream on `done` (nothing active any more), so the
 * browser does not reconnect to a finished stream.
 */
(function () {
  "use strict";

  var TERMINAL_NOTICE = "finished — reload for the result and events";

  function elements(id, field) {
    return document.querySelectorAll(
      '[data-run-id="' + CSS.escape(id) + '"][data-run-field="' + field + '"]'
    );
  }

  function apply(snapshot) {
    elements(snapshot.id, "status").forEach(function (badge) {
      badge.className = "run-status run-status--" + snapshot.status;
      badge.textContent = snapshot.status;
      badge.dataset.active = snapshot.active ? "true" : "false";
      if (!snapshot.active && document.body.classList.contains("change-form")) {
        badge.title = TERMINAL_NOTICE;
      }
    });
    elements(snapshot.id, "duration").forEach(function (cell) {
      cell.textContent = snapshot.duration;
      cell.dataset.active = snapshot.active ? "true" : "false";
    });
  }

  function follow() {
    var active = document.querySelectorAll('[data-run-field="status"][data-active="true"]');
    if (active.length === 0 || typeof window.EventSource !== "function") return;
    var ids = Array.from(
      new Set(Array.prototype.map.call(active, function (el) { return el.dataset.runId; }))
    );
    var url = active[0].dataset.streamUrl + "?ids=" + encodeURIComponent(ids.join(","));
    var source = new EventSource(url);
    window.RunStatus.source = source;
    source.addEventListener("status", function (message) {
      apply(JSON.parse(message.data));
    });
    source.addEventListener("gone", function (message) {
      elements(JSON.parse(message.data).id, "status").forEach(function (badge) {
        badge.dataset.active = "false";
        badge.textContent = "deleted";
      });
    });
    source.addEventListener("done", function () {
      source.close();
      window.RunStatus.finished = true;
    });
  }

  window.RunStatus = { apply: apply, source: null, finished: false };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", follow);
  } else {
    follow();
  }
})();
