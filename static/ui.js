// Small progressive enhancements of the server-rendered pages; every page works without them.
(function () {
  "use strict";

  // Forms that ask first: <form data-confirm="question">.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });

  // A list with VMs in a passing state (creating, starting, ...) reloads itself until they settle.
  var busy = document.querySelector("[data-busy='true']");
  if (busy) { window.setTimeout(function () { window.location.reload(); }, 2500); }

  // Live task progress on a VM page: polls the task API (the session cookie authenticates
  // GETs) and reloads the page once every watched task has ended.
  var box = document.getElementById("tasks");
  var ids = box ? (box.getAttribute("data-watch") || "").split(" ").filter(Boolean) : [];
  if (!ids.length) { return; }
  var open = {};
  ids.forEach(function (id) { open[id] = true; });

  function show(task) {
    var row = box.querySelector('[data-task="' + task.id + '"]');
    if (!row) { return; }
    row.className = "task task-" + task.state;
    row.setAttribute("data-state", task.state);
    var bar = row.querySelector(".meter-used");
    if (bar) { bar.style.width = (task.progress || 0) + "%"; }
    row.querySelector(".task-state").textContent = task.state + (task.state === "running" ? " " + (task.progress || 0) + "%" : "");
    row.querySelector(".task-message").textContent = task.message || "";
  }

  function poll() {
    var pending = Object.keys(open);
    if (!pending.length) { window.location.replace(window.location.pathname); return; }
    Promise.all(pending.map(function (id) {
      return fetch("/api/v1/tasks/" + encodeURIComponent(id), { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (task) {
          if (!task) { delete open[id]; return; }
          show(task);
          if (task.state !== "running") { delete open[id]; }
        })
        .catch(function () { /* try again at the next tick */ });
    })).then(function () { window.setTimeout(poll, 700); });
  }
  window.setTimeout(poll, 300);
}());
