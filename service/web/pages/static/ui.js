// pipeline-runs pages: optional enhancements. Every page works without this file.
"use strict";

// Times are printed in UTC; the title (shown on hover) gains the viewer's local time.
function localTimes(root) {
  root.querySelectorAll("time[datetime]").forEach(function (el) {
    var at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) el.title = el.getAttribute("datetime") + " UTC\nlocal: " + at.toLocaleString();
  });
}

// Activity, newest page: long-poll for newer events (GET /ui/activity/updates waits up to
// 20 s for one) and put them on top.
function follow(table) {
  var status = document.getElementById("live-status");
  var top = status ? status.getAttribute("data-top") : "0";
  var base = table.getAttribute("data-live");
  var body = table.querySelector("tbody");
  function again(delay) { window.setTimeout(poll, delay); }
  function poll() {
    var url = base + (base.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(top);
    fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) {
        if (r.redirected) {  // the session ended: stop, and say so
          if (status) status.textContent = "Signed out: live updates stopped. Reload to sign in.";
          return null;
        }
        if (!r.ok) throw new Error("status " + r.status);
        top = r.headers.get("X-Feed-Top") || top;
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        if (html.trim()) {
          var empty = body.querySelector("tr.empty");
          if (empty) empty.remove();
          body.insertAdjacentHTML("afterbegin", html);
          localTimes(body);
        }
        again(0);
      })
      .catch(function () { again(5000); });
  }
  poll();
}

document.addEventListener("DOMContentLoaded", function () {
  document.documentElement.classList.add("js");
  localTimes(document);
  var live = document.querySelector("table[data-live]");
  if (live) follow(live);
});
