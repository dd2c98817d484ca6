/*
 * Live status and progress for the executions admin (changelist and change page).
 *
 * Two halves, kept apart so the transport can change:
 *   - applySnapshot(snapshot) patches one execution's badge, bar, step, duration and cancel
 *     button in place. A snapshot is what both progress endpoints send for one execution.
 *   - the transport: startStreaming(options) opens ONE EventSource on the admin's multiplexed
 *     stream for every execution active on the page (one per row would exhaust the browser's
 *     ~6 connections per origin) and hands each `snapshot` event to a callback. Where
 *     EventSource is missing, or the stream fails repeatedly, startPolling(options) asks the
 *     JSON endpoint every interval instead. Both stop by themselves once nothing on the page
 *     is active any more.
 */
(function () {
  "use strict";

  function elements(id, field) {
    return document.querySelectorAll(
      '[data-execution-id="' + CSS.escape(id) + '"][data-execution-field="' + field + '"]'
    );
  }

  function applySnapshot(snapshot) {
    elements(snapshot.id, "status").forEach(function (badge) {
      badge.className = "exec-status exec-status--" + snapshot.status;
      badge.textContent = snapshot.status_label;
      badge.dataset.active = snapshot.active ? "true" : "false";
    });
    elements(snapshot.id, "progress").forEach(function (bar) {
      var width = Number(snapshot.percentage).toFixed(2);
      bar.className = "exec-progress exec-progress--" + snapshot.status;
      bar.querySelector(".exec-progress__track").setAttribute("aria-valuenow", width);
      bar.querySelector(".exec-progress__fill").style.width = width + "%";
      bar.querySelector(".exec-progress__pct").textContent = snapshot.percentage_label;
      bar.querySelector(".exec-progress__step").textContent = snapshot.step_label;
    });
    elements(snapshot.id, "duration").forEach(function (cell) {
      cell.textContent = snapshot.duration;
    });
    if (!snapshot.active) {
      elements(snapshot.id, "cancel").forEach(function (form) {
        // Not the hidden attribute: the admin's `.object-tools li` display rule overrides it.
        (form.closest("li") || form).style.display = "none";
      });
      showFinished(snapshot.id);
    }
  }

  var finishedShown = new Set();

  function showFinished(id) {
    // Only the change page has the notice: there, bring in the outputs, error, timing and
    // timeline the server now renders; say "reload" only if that fails.
    var notices = elements(id, "finished-notice");
    if (notices.length === 0 || finishedShown.has(id)) return;
    finishedShown.add(id);
    function showNotice() {
      notices.forEach(function (notice) {
        notice.hidden = false;
      });
    }
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("change page answered " + response.status);
        return response.text();
      })
      .then(function (html) {
        var page = new DOMParser().parseFromString(html, "text/html");
        var selector = "#content-main fieldset.module";
        var fresh = page.querySelectorAll(selector);
        var shown = document.querySelectorAll(selector);
        if (fresh.length === 0 || fresh.length !== shown.length) throw new Error("page changed");
        shown.forEach(function (fieldset, index) {
          fieldset.replaceWith(document.adoptNode(fresh[index]));
        });
      })
      .catch(showNotice);
  }

  function markGone(id) {
    // Deleted (pruned) while on screen: stop asking for it.
    elements(id, "status").forEach(function (badge) {
      badge.dataset.active = "false";
    });
  }

  function activeIds() {
    var ids = new Set();
    document
      .querySelectorAll('[data-execution-field="status"][data-active="true"]')
      .forEach(function (badge) {
        ids.add(badge.dataset.executionId);
      });
    return Array.from(ids);
  }

  function startPolling(options) {
    var url = options.url;
    var intervalMs = options.intervalMs || 1000;
    var getIds = options.activeIds || activeIds;
    var onSnapshot = options.onSnapshot || applySnapshot;
    var onGone = options.onGone || markGone;
    var timer = null;
    var inFlight = false;
    var stopped = false;
    var failures = 0;

    function schedule() {
      if (stopped || inFlight || timer !== null) return;
      // Back off while the server is unreachable, up to ten intervals.
      timer = setTimeout(tick, intervalMs * Math.min(Math.pow(2, failures), 10));
    }

    function tick() {
      timer = null;
      var ids = getIds();
      if (stopped || ids.length === 0) return; // nothing active: polling ends here
      if (document.hidden) return; // resumed by the visibilitychange listener
      inFlight = true;
      fetch(url + "?ids=" + encodeURIComponent(ids.join(",")), {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      })
        .then(function (response) {
          if (response.status === 401 || response.status === 403) {
            stopped = true; // logged out: a reload will show the login page
            return null;
          }
          if (!response.ok) throw new Error("progress endpoint answered " + response.status);
          return response.json();
        })
        .then(function (body) {
          if (body === null) return;
          var seen = new Set();
          body.executions.forEach(function (snapshot) {
            seen.add(snapshot.id);
            onSnapshot(snapshot);
          });
          ids.forEach(function (id) {
            if (!seen.has(id)) onGone(id);
          });
          failures = 0;
        })
        .catch(function () {
          failures += 1;
        })
        .then(function () {
          inFlight = false;
          schedule();
        });
    }

    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) schedule();
    });
    schedule();
    return {
      stop: function () {
        stopped = true;
        if (timer !== null) clearTimeout(timer);
        timer = null;
      },
    };
  }

  function startStreaming(options) {
    var url = options.url;
    var getIds = options.activeIds || activeIds;
    var onSnapshot = options.onSnapshot || applySnapshot;
    var onGone = options.onGone || markGone;
    var onFailure = options.onFailure || function () {};
    var maxFailures = options.maxFailures || 3;
    var source = null;
    var timer = null;
    var stopped = false;
    var failures = 0;

    function closeSource() {
      if (source !== null) source.close();
      source = null;
    }

    function stop() {
      stopped = true;
      closeSource();
      if (timer !== null) clearTimeout(timer);
      timer = null;
    }

    function finishIfIdle() {
      // The server ends the stream too, but an EventSource would reconnect to a closed one.
      if (getIds().length === 0) stop();
    }

    function open() {
      timer = null;
      var ids = getIds();
      if (stopped || ids.length === 0) return;
      // Reopened with the ids still active, never the URL of the last connection.
      source = new EventSource(url + "?ids=" + encodeURIComponent(ids.join(",")));
      source.addEventListener("snapshot", function (event) {
        failures = 0;
        onSnapshot(JSON.parse(event.data));
        finishIfIdle();
      });
      source.addEventListener("gone", function (event) {
        onGone(JSON.parse(event.data).id);
        finishIfIdle();
      });
      source.onerror = function () {
        // A dropped connection, a 403 after logout, a proxy cutting the stream: each lands here.
        closeSource();
        if (stopped || getIds().length === 0) return;
        failures += 1;
        if (failures >= maxFailures) {
          stop();
          onFailure();
          return;
        }
        timer = setTimeout(open, 500 * failures);
      };
    }

    open();
    return { stop: stop };
  }

  window.ExecutionProgress = {
    applySnapshot: applySnapshot,
    activeIds: activeIds,
    startPolling: startPolling,
    startStreaming: startStreaming,
  };

  function boot() {
    var config = document.getElementById("execution-progress-config");
    if (!config) return;
    var settings = JSON.parse(config.textContent);
    var progress = window.ExecutionProgress;

    function poll() {
      progress.transport = "polling";
      progress.poller = startPolling({ url: settings.url, intervalMs: settings.intervalMs });
    }

    if (typeof window.EventSource !== "function" || !settings.streamUrl) {
      poll();
      return;
    }
    progress.transport = "streaming";
    progress.stream = startStreaming({ url: settings.streamUrl, onFailure: poll });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", boot);
  } else {
    boot();
  }
})();
