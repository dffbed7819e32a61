// Glue of the harmony fleet dashboard. Loaded from /assets (CSP `script-src 'self'`: no
// inline script anywhere). It does three things HTMX does not:
//   1. error responses: let HTMX swap them (the server retargets them to #flash);
//   2. the shell: xterm.js <-> WebSocket /devices/{id}/shell;
//   3. live reload (serve-web --live-reload): reload when the server's boot id changes.
(function () {
  "use strict";

  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr && event.detail.xhr.status >= 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("click", function (event) {
    var stop = event.target.closest("[data-logs-stop]");
    if (stop && window.htmx) {
      htmx.swap("#logs-panel", '<p class="text-sm text-slate-600">Stopped.</p>', {
        swapStyle: "innerHTML",
      });
    }
    var open = event.target.closest("[data-shell-open]");
    if (open) {
      startShell(open);
    }
  });

  var current = null;

  function startShell(button) {
    if (current || !window.Terminal || !window.FitAddon) {
      return;
    }
    var section = button.closest("section");
    var host = section.querySelector("[data-shell-terminal]");
    var status = section.querySelector("[data-shell-status]");
    var closeButton = section.querySelector("[data-shell-close]");
    host.replaceChildren();
    var term = new window.Terminal({ cursorBlink: true, fontSize: 14, scrollback: 2000 });
    var fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(host);
    try {
      fit.fit();
    } catch (_) {
      /* not laid out yet: keep 80x24 */
    }
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var url =
      scheme + "//" + location.host + "/devices/" + encodeURIComponent(button.dataset.shellOpen) +
      "/shell?cols=" + term.cols + "&rows=" + term.rows;
    var ws = new WebSocket(url);
    var observer = new ResizeObserver(function () {
      try {
        fit.fit();
      } catch (_) {
        /* ignore */
      }
    });
    current = { term: term, ws: ws };
    host.dataset.state = "connecting";
    status.textContent = "Connecting…";
    button.hidden = true;
    closeButton.hidden = false;
    closeButton.onclick = function () {
      ws.close(1000, "closed by the user");
    };
    ws.onopen = function () {
      host.dataset.state = "open";
      status.textContent = "Connected.";
      term.focus();
    };
    ws.onmessage = function (message) {
      term.write(message.data);
    };
    ws.onclose = function (event) {
      var reason = event.reason || "session closed";
      host.dataset.state = "closed";
      status.textContent = "Closed: " + reason;
      term.write("\r\n\x1b[33m[" + reason + "]\x1b[0m\r\n");
      button.hidden = false;
      closeButton.hidden = true;
      observer.disconnect();
      current = null;
    };
    term.onData(function (data) {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "input", data: data }));
      }
    });
    term.onResize(function (size) {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
      }
    });
    observer.observe(host);
  }

  function liveReload() {
    if (document.body.dataset.liveReload !== "true") {
      return;
    }
    var boot = null;
    var source = new EventSource("/_live-reload");
    source.addEventListener("boot", function (event) {
      if (boot === null) {
        boot = event.data;
      } else if (boot !== event.data) {
        location.reload();
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", liveReload);
  } else {
    liveReload();
  }
})();
