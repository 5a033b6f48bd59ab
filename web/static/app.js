// fleetup dashboard: the little that htmx does not do. Pages work without it for reading.
(function () {
  "use strict";
  // Package upload: send the chosen file as the request body (as the API takes it),
  // with the session's CSRF token in a header.
  function setupUpload() {
    var form = document.getElementById("upload");
    if (!form) return;
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var file = document.getElementById("package-file").files[0];
      var status = document.getElementById("upload-status");
      if (!file) { status.textContent = "Choose a package file first."; return; }
      status.textContent = "Uploading and verifying " + file.name + "…";
      fetch(form.dataset.url, {
        method: "POST",
        headers: { "X-CSRF-Token": document.body.dataset.csrf, "Content-Type": "application/octet-stream" },
        body: file,
        credentials: "same-origin"
      }).then(function (resp) {
        if (resp.ok) { window.location.assign("/packages"); return; }
        return resp.text().then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var msg = doc.querySelector(".message");
          status.textContent = msg ? msg.textContent : "Upload failed (HTTP " + resp.status + ").";
        });
      }).catch(function (e) { status.textContent = "Upload failed: " + e; });
    });
  }
  // Read-only remediation boxes: one click selects everything, ready to copy.
  document.addEventListener("focusin", function (ev) {
    if (ev.target.matches && ev.target.matches("textarea.copy")) ev.target.select();
  });
  // Destructive forms carry the sentence saying what they do (data-confirm, and a hidden
  // `confirm` field for the server's own confirmation page without JavaScript). Asked here
  // once; on OK the form says `confirmed=yes` and the server acts at once.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.dataset || !form.dataset.confirm) return;
    if (!window.confirm(form.dataset.confirm)) { ev.preventDefault(); return; }
    if (!form.querySelector("input[name=confirmed]")) {
      var yes = document.createElement("input");
      yes.type = "hidden"; yes.name = "confirmed"; yes.value = "yes";
      form.appendChild(yes);
    }
  }, true);

  // Live rollout pages: how fresh the page is, a banner while the stream is down, and the
  // elapsed time of running phases, ticking between updates.
  var lastHeard = null;
  function heard() { lastHeard = Date.now(); }
  function text(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + ("0" + (s % 60)).slice(-2) + " s";
  }
  function tick() {
    var updated = document.getElementById("updated");
    if (updated) {
      if (lastHeard === null) lastHeard = Number(updated.dataset.at) || Date.now();
      var ago = Date.now() - lastHeard;
      updated.textContent = ago < 2000 ? "updated just now" : "updated " + text(ago) + " ago";
    }
    var els = document.querySelectorAll(".elapsed[data-since]");
    for (var i = 0; i < els.length; i++) els[i].textContent = text(Date.now() - Number(els[i].dataset.since));
  }
  function lost(isLost) {
    var banner = document.getElementById("conn-lost");
    if (banner) banner.hidden = !isLost;
    var status = document.getElementById("live-status");
    if (status) status.classList.toggle("is-lost", isLost);
  }
  document.addEventListener("htmx:sseOpen", function () { lost(false); heard(); });
  document.addEventListener("htmx:sseError", function () { lost(true); });
  document.addEventListener("htmx:sseMessage", heard);
  document.addEventListener("htmx:afterSwap", function (ev) {
    if (ev.target && (ev.target.id === "status" || ev.target.id === "grid")) heard();
    tick();
  });
  setInterval(tick, 1000);

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setupUpload);
  else setupUpload();
})();
