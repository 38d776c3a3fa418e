// LPMOS web UI: applies the control plane's live push (/live, a WebSocket) to the
// page, keeps "… ago" fresh, and asks for confirmation before an approval. Every page
// is complete without this script; it only keeps pages current.
"use strict";
(() => {
  const body = document.body;
  const filter = { region: body.dataset.region || "", status: body.dataset.status || "" };
  const pageTask = body.dataset.task || "";
  const connEl = document.getElementById("live-status");
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // ---- connection, reconnecting with back-off (a restarted control plane comes back)
  let delay = 500;
  function setConn(text, cls) {
    if (!connEl) return;
    connEl.hidden = false;
    connEl.textContent = text;
    connEl.className = "conn " + cls;
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(proto + "//" + location.host + "/live");
    } catch (e) {
      retry();
      return;
    }
    ws.onopen = () => { delay = 500; setConn("live", "conn-live"); };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      handle(m);
    };
    ws.onclose = retry;
  }
  function retry() {
    setConn("reconnecting…", "conn-lost");
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 10000);
  }

  function handle(m) {
    switch (m.type) {
      case "snapshot":
        regions(m);
        unmatched(m);
        (m.tasks || []).forEach(task);
        break;
      case "task": task(m.task); break;
      case "tasks": (m.tasks || []).forEach(task); break;
      case "task_deleted":
        $$('tr[data-task="' + CSS.escape(m.deleted) + '"]').forEach((r) => r.remove());
        break;
      case "regions": regions(m); break;
      case "unmatched": unmatched(m); break;
      case "etcd":
        if (m.etcd_error) setConn(m.etcd_error, "conn-lost");
        else setConn("live", "conn-live");
        break;
    }
  }

  // ---- tasks
  function setText(root, field, text) {
    $$('[data-field="' + field + '"]', root).forEach((el) => { el.textContent = text; });
  }
  function setTime(el, iso) {
    if (!el) return;
    el.setAttribute("datetime", iso);
    el.dataset.since = iso;
    el.textContent = ago(iso);
  }
  function fillTask(root, v) {
    setText(root, "short", v.short);
    setText(root, "region", v.region);
    setText(root, "mac", v.mac);
    setText(root, "os", v.os);
    setText(root, "error", v.error || "");
    $$('[data-field="stale"]', root).forEach((e) => { e.hidden = !v.stale; });
    setText(root, "percent_text", v.percent_text);
    setText(root, "stage", v.stage);
    setText(root, "rate", v.rate || "—");
    setText(root, "eta", v.eta || "—");
    setText(root, "message", v.message || "");
    $$('[data-field="status_label"]', root).forEach((el) => {
      el.textContent = v.status_label;
      el.className = "badge st-" + v.status;
    });
    $$('[data-field="progress-box"]', root).forEach((el) => { el.hidden = !v.has_progress; });
    $$('[data-field="no-progress"]', root).forEach((el) => { el.hidden = v.has_progress; });
    $$('[data-field="bar"]', root).forEach((el) => {
      el.value = v.percent;
      el.textContent = v.percent_text;
    });
    $$('[data-field="updated"]', root).forEach((el) => setTime(el, v.updated));
  }
  function matches(v) {
    return (!filter.region || v.region === filter.region) && (!filter.status || v.status === filter.status);
  }
  function task(v) {
    if (!v) return;
    let rows = $$('tr[data-task="' + CSS.escape(v.id) + '"]');
    const tbody = $("#task-rows");
    const tmpl = $("#task-row-template");
    if (rows.length === 0 && tbody && tmpl && matches(v)) {
      const row = tmpl.content.firstElementChild.cloneNode(true);
      row.id = "task-" + v.id;
      row.dataset.task = v.id;
      row.dataset.taskRegion = v.region;
      const bar = $('[data-field="bar"]', row);
      bar.id = "progress-" + v.id;
      bar.setAttribute("aria-label", "Install progress of task " + v.short);
      $('[data-href="task"]', row).href = "/tasks/" + encodeURIComponent(v.id);
      $('[data-href="region"]', row).href = "/regions/" + encodeURIComponent(v.region);
      tbody.prepend(row);
      rows = [row];
      const empty = $("#task-empty");
      if (empty) empty.hidden = true;
    }
    rows.forEach((r) => fillTask(r, v));
    if (pageTask === v.id) {
      fillTask($("#main"), v);
      const box = $('[data-rendered-status]');
      const note = $("#status-changed");
      if (box && note && box.dataset.renderedStatus !== v.status) {
        setText(note, "new-status", v.status_label);
        note.hidden = false;
      }
    }
  }

  // ---- regions and unmatched reports
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, val]) => e.setAttribute(k, val));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function newRegionRow(r) {
    const tr = el("tr", { id: "region-" + r.name, "data-region-row": r.name });
    const th = el("th", { scope: "row" });
    th.append(el("a", { href: "/regions/" + encodeURIComponent(r.name) }, r.name));
    const health = el("td");
    health.append(el("span", { "data-field": "health" }), " ", el("span", { class: "stale", "data-field": "region-stale", hidden: "" }, "stale"));
    const hb = el("td");
    hb.append(el("span", { "data-field": "heartbeat" }));
    const counts = el("td");
    counts.append(el("ul", { class: "counts", "data-field": "counts" }));
    const unm = el("td");
    unm.append(el("span", { "data-field": "unmatched" }));
    tr.append(th, health, hb, counts, el("td", { "data-field": "installing" }), unm);
    return tr;
  }
  function fillRegion(root, r) {
    $$('[data-field="health"]', root).forEach((e) => {
      e.textContent = r.health_text || r.health;
      e.className = "health health-" + r.health;
    });
    $$('[data-field="region-stale"]', root).forEach((e) => { e.hidden = !r.stale; });
    $$('[data-field="heartbeat"]', root).forEach((e) => {
      const t = el("time");
      if (r.heartbeat) {
        setTime(t, r.heartbeat);
        t.dataset.field = "heartbeat";
        e.replaceWith(t);
        return;
      }
      const span = el("span", { "data-field": "heartbeat" }, "none");
      if (r.last_seen) {
        setTime(t, r.last_seen);
        span.append(" · last seen ", t);
      }
      e.replaceWith(span);
    });
    $$('[data-field="counts"]', root).forEach((ul) => {
      ul.replaceChildren();
      (r.counts || []).filter((c) => c.n > 0).forEach((c) => {
        const li = el("li", { class: "st-" + c.status }, c.label + " ");
        li.append(el("b", {}, String(c.n)));
        ul.append(li);
      });
      if (!r.total) ul.append(el("li", {}, "no tasks"));
    });
    setText(root, "installing", String(r.installing));
    $$('[data-field="unmatched"]', root).forEach((e) => {
      e.textContent = String(r.unmatched);
      e.className = r.alert ? "count-alert" : "";
    });
  }
  function regions(m) {
    const list = m.regions || [];
    const tbody = $("#region-rows");
    list.forEach((r) => {
      let row = $('[data-region-row="' + CSS.escape(r.name) + '"]');
      if (!row && tbody) {
        row = newRegionRow(r);
        tbody.append(row);
        const empty = $("#region-empty");
        if (empty) empty.hidden = true;
      }
      if (row) fillRegion(row, r);
      $$('[data-region-health="' + CSS.escape(r.name) + '"]').forEach((e) => {
        e.textContent = r.health;
        e.className = "health health-" + r.health;
      });
    });
    const alerting = list.filter((r) => r.alert);
    const banner = $("#unmatched-alert");
    if (banner) {
      banner.hidden = alerting.length === 0;
      const names = $("#unmatched-alert-regions");
      if (names) names.textContent = alerting.map((r) => r.name + " (" + r.unmatched + ")").join(", ");
    }
    totals(m);
  }
  function totals(m) {
    $$('[data-live="unmatched-total"]').forEach((e) => {
      e.textContent = String(m.unmatched_total);
      e.classList.toggle("count-alert", m.unmatched_total > m.alert_over);
    });
  }
  function unmatched(m) {
    const ul = $("#unmatched-items");
    if (!ul) return;
    const list = (m.unmatched || []).filter((u) => !filter.region || u.region === filter.region);
    ul.replaceChildren();
    list.forEach((u) => {
      const li = el("li", { "data-report": u.id });
      const a = el("a", { href: "/unmatched#report-" + u.region + "-" + u.id });
      a.append(el("code", {}, u.mac));
      const reg = el("a", { href: "/regions/" + encodeURIComponent(u.region) }, u.region);
      const t = el("time");
      setTime(t, u.received);
      li.append(a, " in ", reg, ", ", t);
      if (u.summary) li.append(" ", el("span", { class: "summary" }, u.summary));
      ul.append(li);
    });
    const empty = $("#unmatched-empty");
    if (empty) empty.hidden = list.length > 0;
  }

  // ---- ages
  function ago(iso) {
    const t = Date.parse(iso);
    if (isNaN(t)) return "";
    const s = Math.max(0, Math.floor((Date.now() - t) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 48 * 3600) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " days ago";
  }
  setInterval(() => {
    $$("[data-since]").forEach((e) => { e.textContent = ago(e.dataset.since); });
  }, 1000);

  // ---- approval: an in-page dialog that names the disk and the image. Without
  // JavaScript the same form leads to a confirmation page instead.
  $$("form[data-confirm]").forEach((f) => {
    f.addEventListener("submit", (e) => {
      const d = document.getElementById(f.dataset.confirm);
      if (d && typeof d.showModal === "function") {
        e.preventDefault();
        d.showModal();
      }
    });
  });

  // ---- add task: a catalog image fills the OS fields, and only the chosen region's
  // images are offered.
  const image = document.getElementById("image");
  const regionSel = document.getElementById("region");
  if (image) {
    const sync = () => {
      const region = regionSel ? regionSel.value : "";
      $$("optgroup[data-region]", image).forEach((g) => {
        const other = region !== "" && g.dataset.region !== region;
        g.hidden = other;
        g.disabled = other;
      });
      if (image.selectedOptions.length && image.selectedOptions[0].disabled) image.value = "";
    };
    image.addEventListener("change", () => {
      if (!image.value) return;
      // The value is "os_type=...&os_version=..." (names may hold spaces).
      const ref = new URLSearchParams(image.value);
      document.getElementById("os_type").value = ref.get("os_type") || "";
      document.getElementById("os_version").value = ref.get("os_version") || "";
    });
    if (regionSel) regionSel.addEventListener("change", sync);
    sync();
  }

  connect();
})();
