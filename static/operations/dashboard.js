// Refreshes the operations page's panel in place every few seconds while the tab is visible.
(function () {
  "use strict";
  function start() {
    const panel = document.getElementById("ops-panel");
    if (!panel) return;
    const url = panel.dataset.url;
    const interval = Number(panel.dataset.interval) || 5000;
    let busy = false;
    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } });
        if (response.ok) {
          panel.innerHTML = await response.text();
          panel.dataset.refreshed = String(Date.now());
        }
      } catch (error) {
        // The server restarting: the next tick tries again.
      } finally {
        busy = false;
      }
    }
    setInterval(refresh, interval);
    document.addEventListener("visibilitychange", refresh);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
