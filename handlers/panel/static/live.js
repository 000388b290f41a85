/* Live updates of the report list: every 15 s, ask /panel/live.json for the reports of the same
   filter changed since the cursor; replace their rows, put new ones on top (first page, newest
   first), and say how many changed. No framework, no inline script (the console's CSP). */
(function () {
  "use strict";
  var note = document.getElementById("live");
  var body = document.getElementById("rows");
  if (!note || !body || !window.fetch) { return; }
  var since = note.getAttribute("data-since");
  var src = note.getAttribute("data-src");
  var insert = note.getAttribute("data-insert") === "1";
  var template = note.getAttribute("data-template");
  var seen = 0;

  function rowOf(html) {
    var holder = document.createElement("tbody");
    holder.innerHTML = html.trim();
    return holder.firstElementChild;
  }

  function apply(rows) {
    rows.forEach(function (item) {
      var fresh = rowOf(item.html);
      if (!fresh) { return; }
      var old = body.querySelector('tr[data-code="' + item.code + '"]');
      if (old) {
        var box = old.querySelector('input[type="checkbox"]');
        var ticked = box && box.checked;
        old.replaceWith(fresh);
        var again = fresh.querySelector('input[type="checkbox"]');
        if (again && ticked) { again.checked = true; }
      } else if (insert) {
        body.insertBefore(fresh, body.firstElementChild);
      } else {
        return;
      }
      fresh.classList.add("fresh");
      seen += 1;
    });
    if (seen) { note.textContent = template.replace("{count}", String(seen)); }
  }

  function poll() {
    var url = src + (src.indexOf("?") < 0 ? "?" : "&") + "since=" + encodeURIComponent(since || "");
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        if (since && data.rows && data.rows.length) { apply(data.rows); }
        if (data.cursor) { since = data.cursor; }
      })
      .catch(function () { /* offline for a moment: the next poll tries again */ })
      .then(function () { window.setTimeout(poll, 15000); });
  }
  window.setTimeout(poll, 15000);
  window.katilimLivePoll = poll;
}());
