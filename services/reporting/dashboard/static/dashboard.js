// PORTline dashboard: the page's only script (same origin, allowed by its CSP).
// 1. A sign-in link carries a bearer token in its fragment (#token=...), which browsers never
//    send to a server or write to a log. Remove it from the address and the history at once,
//    then trade it for an HttpOnly, SameSite=Strict cookie and reload.
// 2. Show a print button (printing works without it: the page has print styles).
(function () {
  "use strict";
  var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    var token = decodeURIComponent(match[1]);
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    fetch("/dashboard/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { Authorization: "Bearer " + token },
    }).then(function (response) {
      if (response.ok) {
        window.location.reload();
        return;
      }
      var status = document.getElementById("signin-status");
      if (status) {
        status.textContent = "This sign-in link is not valid or has expired.";
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("print");
    if (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    }
  });
})();
