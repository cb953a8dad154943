// The hosted connect page keeps itself current: the flow's events arrive as server-sent events, and on
// each change of stage the page's <main> is fetched again (from its own address, data-page: a form's
// answer is shown at the form's) and put in place, without a reload. A page refused its event stream
// (too many open on the flow) looks again every few seconds instead. A finished
// page with somewhere to go back to goes there after a moment; in a popup (a "popup" flow, its opener
// still there) it hands the result to the partner's page that opened it instead, then closes itself.
"use strict";

(function () {
  var TERMINAL = ["connection.completed", "authorization.failed", "authorization.expired"];
  var TYPES = ["authorization.started", "callback.received", "selection.required", "selection.submitted"]
    .concat(TERMINAL);
  var RESULT = "oktopost-connect:result";
  var CLOSE_AFTER_MS = 1000;  // the popup shows the outcome this long after handing it over
  var POLL_MS = 3000;  // without its event stream, the page looks again this often (as its <noscript> does)
  var source = null;
  var polling = null;
  var page = window.location.pathname;
  var seen = 0;
  var followed = false;

  function stop() {
    if (source) {
      source.close();
      source = null;
    }
    if (polling) {
      window.clearInterval(polling);
      polling = null;
    }
  }

  function handOver(link) {
    var origin = link.getAttribute("data-opener-origin");
    var opener = window.opener;
    if (!origin || !opener || opener.closed) {
      return false;
    }
    var result = {
      type: RESULT, flow_id: link.getAttribute("data-flow-id"), status: link.getAttribute("data-outcome")
    };
    opener.postMessage(result, origin);  // only a page of the return_url's origin receives it
    window.setTimeout(function () { window.close(); }, CLOSE_AFTER_MS);
    return true;
  }

  function followContinue() {
    var link = document.getElementById("continue");
    if (!link || followed) {
      return;
    }
    followed = true;
    if (handOver(link)) {
      return;
    }
    var seconds = Number(link.getAttribute("data-after")) || 2;
    window.setTimeout(function () { window.location.assign(link.href); }, seconds * 1000);
  }

  function show(html) {
    var next = new DOMParser().parseFromString(html, "text/html");
    var fresh = next.querySelector("main");
    var current = document.querySelector("main");
    if (!fresh || !current || fresh.getAttribute("data-status") === current.getAttribute("data-status")) {
      return;
    }
    var placed = document.importNode(fresh, true);
    current.replaceWith(placed);
    document.title = next.title;
    seen = Math.max(seen, Number(placed.getAttribute("data-seq")) || 0);
    var heading = placed.querySelector("h1");
    if (heading) {
      heading.focus();
    }
    if (!placed.hasAttribute("data-events")) {
      stop();
      followContinue();
    }
  }

  function refresh() {
    window.fetch(page, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) { return answer.text(); })
      .then(show)
      .catch(function () { /* the next event, or the reconnection, tries again */ });
  }

  function listen(url) {
    source = new window.EventSource(url);
    source.onerror = function () {
      // refused (a 429, a 403) or gone for good: the browser will not reconnect by itself
      if (source && source.readyState === window.EventSource.CLOSED) {
        source = null;
        polling = window.setInterval(refresh, POLL_MS);
      }
    };
    TYPES.forEach(function (type) {
      source.addEventListener(type, function (message) {
        var terminal = TERMINAL.indexOf(type) >= 0;
        if (terminal) {
          stop();  // the stream ends here; reconnecting would only replay it
        }
        if (terminal || Number(message.lastEventId) > seen) {
          refresh();
        }
      });
    });
  }

  var main = document.querySelector("main");
  if (main) {
    seen = Number(main.getAttribute("data-seq")) || 0;
    page = main.getAttribute("data-page") || page;
    if (main.hasAttribute("data-events") && window.EventSource) {
      listen(main.getAttribute("data-events"));
    }
  }
  followContinue();
})();
