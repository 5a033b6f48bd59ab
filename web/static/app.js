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
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setupUpload);
  else setupUpload();
})();
