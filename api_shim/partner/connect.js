// oktopost-connect for the partner's page: opens a "popup" flow's consent in a popup window and hands
// its result back.
//
//   <script src="{PUBLIC_BASE_URL}/static/connect.js"></script>
//   OktopostConnect.open(startUrl, {  // the flow's start_url (its redirect_url works too, unbound)
//     onResult: function (result) { /* {type: "oktopost-connect:result", flow_id, status} */ },
//     onClose: function () { /* the user closed the popup before the end */ }
//   });
//
// open() returns the popup window (null when the browser blocked it). The result is taken only from that
// popup and only from the shim's origin (the one this script was loaded from); onResult or onClose is
// called once, never both.
"use strict";

(function (global) {
  var RESULT = "oktopost-connect:result";
  var WATCH_MS = 250;  // how often a closed popup is looked for
  var FEATURES = "popup,width=520,height=720";
  var script = document.currentScript;
  var shimOrigin = script ? new URL(script.src, global.location.href).origin : null;

  function open(url, options) {
    var callbacks = options || {};
    var popup = global.open(url, "oktopost-connect", FEATURES);
    if (!popup) {
      return null;
    }
    var ended = false;
    var watcher = null;

    function end() {
      ended = true;
      global.removeEventListener("message", receive);
      global.clearInterval(watcher);
    }

    function receive(event) {
      var result = event.data;
      if (ended || event.source !== popup || event.origin !== shimOrigin) {
        return;
      }
      if (!result || result.type !== RESULT) {
        return;
      }
      end();
      if (typeof callbacks.onResult === "function") {
        callbacks.onResult({ type: RESULT, flow_id: result.flow_id, status: result.status });
      }
    }

    global.addEventListener("message", receive);
    watcher = global.setInterval(function () {
      if (!ended && popup.closed) {
        end();
        if (typeof callbacks.onClose === "function") {
          callbacks.onClose();
        }
      }
    }, WATCH_MS);
    return popup;
  }

  global.OktopostConnect = { open: open };
})(window);
