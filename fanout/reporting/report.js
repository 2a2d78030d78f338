// fanout report: the run as a picture. A lane per process, a bar per task from its start
// to its finish, coloured by how it ended; the figures above it are computed here, from
// the columns fanout packed (fanout/reporting/pack.py). Drawn on a canvas, lanes and
// bars in view only, so that 100,000 tasks draw in milliseconds.
(function () {
  "use strict";

  const D = JSON.parse(document.getElementById("fanout-data").textContent);
  const N = D.n, C = D.cols, S = D.strings, KINDS = D.kinds, LANES = D.lanes, L = LANES.length;
  const NOT_RUN = "(not run)";
  const PALETTE = {
    ok: "#3b8f5e", raised: "#d62f3c", timeout: "#f0a020", "memory-limit": "#a0522d",
    "oom-killed": "#5b2c83", killed: "#8e44ad", exited: "#e377c2", lost: "#2f3b46",
    cancelled: "#b4bac1", "not-run": "#8d99a6",
  };
  const SAID = {
    ok: "ok", raised: "raised", timeout: "timed out", "memory-limit": "over --max-memory",
    "oom-killed": "OOM-killed", killed: "killed", exited: "exited", lost: "lost",
    cancelled: "cancelled", "not-run": "not run",
  };
  const color = (k) => PALETTE[KINDS[k]] || "#17a2b8";
  const $ = (id) => document.getElementById(id);

  // ---- the columns, as typed arrays -------------------------------------------------
  const start = new Float64Array(N), end = new Float64Array(N);
  const lane = Int32Array.from(C.lane), kind = Uint8Array.from(C.kind);
  for (let i = 0; i < N; i++) {
    start[i] = C.start[i] / 1e6;
    end[i] = start[i] + C.dur[i] / 1e6;
  }
  const indexOf = (row) => (C.index ? C.index[row] : row);
  let rowOfIndex = null;
  function rowOf(index) {
    if (!C.index) return index >= 0 && index < N ? index : -1;
    if (!rowOfIndex) {
      rowOfIndex = new Map();
      for (let i = 0; i < N; i++) rowOfIndex.set(C.index[i], i);
    }
    const row = rowOfIndex.get(index);
    return row === undefined ? -1 : row;
  }
  const isWorker = (l) => LANES[l][1] !== NOT_RUN;
  const laneLabel = (l) =>
    isWorker(l) ? LANES[l][0] + " · " + LANES[l][1] + " · " + LANES[l][2] : LANES[l][0] + " · " + NOT_RUN;

  // Each lane's tasks, by start (a counting sort on the lane, then each lane sorted).
  const laneFrom = new Int32Array(L + 1);
  for (let i = 0; i < N; i++) laneFrom[lane[i] + 1]++;
  for (let l = 0; l < L; l++) laneFrom[l + 1] += laneFrom[l];
  const byLane = new Int32Array(N);
  {
    const at = laneFrom.slice(0, L);
    for (let i = 0; i < N; i++) byLane[at[lane[i]]++] = i;
  }
  const laneLongest = new Float64Array(L);
  for (let l = 0; l < L; l++) {
    const seg = byLane.subarray(laneFrom[l], laneFrom[l + 1]);
    seg.sort((a, b) => start[a] - start[b]);
    let most = 0;
    for (const t of seg) most = Math.max(most, end[t] - start[t]);
    laneLongest[l] = most;
  }

  // ---- the figures ---------------------------------------------------------------
  const counts = new Array(KINDS.length).fill(0);
  let wall = 0, lastStart = 0;
  for (let i = 0; i < N; i++) {
    counts[kind[i]]++;
    if (end[i] > wall) wall = end[i];
    if (isWorker(lane[i]) && start[i] > lastStart) lastStart = start[i];
  }
  const K = (name) => KINDS.indexOf(name);
  const okKind = K("ok");
  const nOk = okKind < 0 ? 0 : counts[okKind];
  const nCancelled = K("cancelled") < 0 ? 0 : counts[K("cancelled")];
  const workerLanes = [];
  for (let l = 0; l < L; l++) if (isWorker(l)) workerLanes.push(l);
  const hosts = new Set(workerLanes.map((l) => LANES[l][0]));

  // Per lane: busy (the union of its bars), idle between its first and last task, and
  // the part of that idle time before the run's last task started (tasks were waiting).
  const stats = [];
  const gaps = []; // the ten longest idle gaps: [length, lane, from, to]
  function noteGap(l, a, b) {
    const len = b - a;
    if (len <= 0) return;
    if (gaps.length < 10 || len > gaps[gaps.length - 1][0]) {
      gaps.push([len, l, a, b]);
      gaps.sort((x, y) => y[0] - x[0]);
      if (gaps.length > 10) gaps.pop();
    }
  }
  let idleWaited = 0, busyAll = 0;
  for (let l = 0; l < L; l++) {
    const s = { lane: l, tasks: laneFrom[l + 1] - laneFrom[l], busy: 0, idle: 0, waited: 0,
      first: 0, last: 0 };
    stats.push(s);
    if (!s.tasks || !isWorker(l)) continue;
    let a = -1, b = -1;
    for (let q = laneFrom[l]; q < laneFrom[l + 1]; q++) {
      const t = byLane[q];
      if (a < 0) { a = start[t]; b = end[t]; s.first = a; continue; }
      if (start[t] <= b) { b = Math.max(b, end[t]); continue; }
      s.busy += b - a;
      const gap = start[t] - b;
      s.idle += gap;
      s.waited += Math.max(0, Math.min(start[t], lastStart) - b);
      noteGap(l, b, start[t]);
      a = start[t]; b = end[t];
    }
    s.busy += b - a;
    s.last = b;
    idleWaited += s.waited;
    busyAll += s.busy;
  }
  const slowest = []; // the ten longest tasks that a process ran: rows
  for (let i = 0; i < N; i++) {
    if (!isWorker(lane[i])) continue;
    const d = end[i] - start[i];
    if (slowest.length < 10 || d > end[slowest[slowest.length - 1]] - start[slowest[slowest.length - 1]]) {
      slowest.push(i);
      slowest.sort((x, y) => end[y] - start[y] - (end[x] - start[x]));
      if (slowest.length > 10) slowest.pop();
    }
  }

  // ---- formatting ------------------------------------------------------------------
  // x with `digits` significant digits and no trailing zeros after its point.
  const sig = (x, digits) => x.toPrecision(digits).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  function dur(s) {
    if (!(s > 0)) return "0 s";
    if (s < 1e-3) return sig(s * 1e6, 3) + " µs";
    if (s < 1) return sig(s * 1e3, 3) + " ms";
    if (s < 60) return sig(s, 3) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  // A share in percent: whole numbers, but never "100%" or "0%" for what is not quite.
  function pct(x) {
    const whole = Math.round(x * 100);
    if ((whole === 100 && x < 1) || (whole === 0 && x > 0) || x < 0.1) return (x * 100).toFixed(1) + "%";
    return whole + "%";
  }
  const num = (n) => n.toLocaleString("en-US");
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "style") node.style.cssText = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const kid of kids) node.append(kid);
    return node;
  }

  // ---- the header --------------------------------------------------------------------
  document.title = "fanout report" + (D.title ? ": " + D.title : "");
  $("title").textContent = "fanout report" + (D.title ? ": " + D.title : "");
  const began = new Date(D.t0 * 1000);
  $("sub").textContent = [D.source, N ? "started " + began.toLocaleString() : "",
    "times are each host's clock"].filter(Boolean).join(" · ");
  const facts = [
    ["tasks", num(N), "tasks"],
    ["ok", num(nOk), "ok" + (N ? " (" + pct(nOk / N) + ")" : "")],
    ["failed", num(N - nOk - nCancelled), "failed", N - nOk - nCancelled > 0],
  ];
  if (nCancelled) facts.push(["cancelled", num(nCancelled), "cancelled"]);
  facts.push(
    ["wall", dur(wall), "wall time"],
    ["workers", num(workerLanes.length), "worker processes"],
    ["hosts", num(hosts.size), hosts.size === 1 ? "host" : "hosts"],
    ["busy", workerLanes.length && wall ? pct(busyAll / (workerLanes.length * wall)) : "-",
      "busy, all workers"],
    ["waited", dur(idleWaited), "idle while tasks waited" +
      (workerLanes.length && wall ? " (" + pct(idleWaited / (workerLanes.length * wall)) + ")" : "")],
    ["tail", dur(Math.max(0, wall - lastStart)), "after the last start"],
  );
  for (const [id, value, label, bad] of facts) {
    $("facts").append(el("div", { className: "fact" + (bad ? " bad" : ""), id: "fact-" + id },
      el("span", { className: "v", id: "stat-" + id }, value), el("span", { className: "k" }, label)));
  }
  let focus = -1; // a cause picked out in the chart, or -1
  KINDS.forEach((name, k) => {
    if (!counts[k]) return;
    const chip = el("li", { "data-cause": name, "data-count": String(counts[k]), title: name },
      el("span", { className: "sw", style: "background:" + color(k) }),
      SAID[name] || name, el("b", {}, num(counts[k])));
    chip.addEventListener("click", () => {
      focus = focus === k ? -1 : k;
      for (const li of $("causes").children) li.classList.toggle("off", focus >= 0 && li !== chip);
      draw();
    });
    $("causes").append(chip);
  });

  // ---- the chart -------------------------------------------------------------------
  const LABEL_W = 250, PAD_R = 14, AXIS_H = 26;
  const rowH = L <= 24 ? 24 : L <= 60 ? 18 : L <= 200 ? 14 : 12;
  const axis = $("axis"), plot = $("plot"), box = $("lanes"), tip = $("tip");
  const actx = axis.getContext("2d"), ctx = plot.getContext("2d");
  const pad = wall > 0 ? wall * 0.01 : 1e-3;
  const full = [-pad, wall + pad];
  let v0 = full[0], v1 = full[1];
  let width = 800, viewH = 100, dpr = 1;
  let pinned = -1, laneMark = -1, select = null;

  function layout() {
    dpr = window.devicePixelRatio || 1;
    width = Math.max(400, $("chart").clientWidth);
    viewH = Math.min(L * rowH, Math.max(220, Math.round(window.innerHeight * 0.62)));
    for (const [canvas, h] of [[axis, AXIS_H], [plot, viewH]]) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(h * dpr);
      canvas.style.width = width + "px";
      canvas.style.height = h + "px";
    }
    box.style.height = viewH + "px";
    $("spacer").style.height = Math.max(0, L * rowH - viewH) + "px";
  }
  const plotW = () => width - LABEL_W - PAD_R;
  const xOf = (t) => LABEL_W + ((t - v0) / (v1 - v0)) * plotW();
  const tOf = (x) => v0 + ((x - LABEL_W) / plotW()) * (v1 - v0);

  function ticks() {
    const span = v1 - v0, want = span / Math.max(1, plotW() / 110);
    const p = Math.pow(10, Math.floor(Math.log10(want)));
    const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= want) || 10 * p;
    const out = [];
    for (let t = Math.ceil(v0 / step) * step; t <= v1; t += step) out.push(t);
    return [out, step];
  }
  function tickLabel(t, step) {
    if (Math.abs(t) < step / 2) return "0";
    if (step >= 60) {
      const m = Math.floor(t / 60), s = Math.round(t - m * 60);
      return m + ":" + String(s).padStart(2, "0");
    }
    if (step < 1e-3) return (t * 1e3).toFixed(Math.max(0, -Math.floor(Math.log10(step * 1e3)))) + " ms";
    return t.toFixed(Math.max(0, -Math.floor(Math.log10(step)))) + " s";
  }

  function drawAxis(tickList, step) {
    actx.setTransform(dpr, 0, 0, dpr, 0, 0);
    actx.clearRect(0, 0, width, AXIS_H);
    actx.fillStyle = "#f6f8fa";
    actx.fillRect(0, 0, width, AXIS_H);
    actx.font = "11px system-ui, sans-serif";
    actx.fillStyle = "#66727f";
    actx.textBaseline = "middle";
    actx.fillText(L + (L === 1 ? " lane" : " lanes") + ": host · name · pid", 8, AXIS_H / 2);
    actx.textAlign = "center";
    for (const t of tickList) {
      const x = xOf(t);
      actx.fillRect(Math.round(x), AXIS_H - 6, 1, 6);
      actx.fillText(tickLabel(t, step), x, AXIS_H / 2 - 2);
    }
    actx.textAlign = "left";
    if (select) {
      const a = Math.min(select.a, select.b), b = Math.max(select.a, select.b);
      actx.fillStyle = "rgba(37,99,235,.25)";
      actx.fillRect(a, 0, b - a, AXIS_H);
    }
  }

  // The first position in lane l's segment whose task may reach time t.
  function firstFrom(l, t) {
    let lo = laneFrom[l], hi = laneFrom[l + 1];
    const from = t - laneLongest[l];
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (start[byLane[mid]] < from) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  function drawPlot(tickList) {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, viewH);
    const top = box.scrollTop, pw = plotW();
    const first = Math.max(0, Math.floor(top / rowH));
    const last = Math.min(L - 1, Math.floor((top + viewH) / rowH));
    ctx.fillStyle = "#eef1f4";
    for (const t of tickList) ctx.fillRect(Math.round(xOf(t)), 0, 1, viewH);
    const font = Math.min(12, rowH - 3);
    ctx.font = font + "px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    const paths = KINDS.map(() => new Path2D());
    const barTop = rowH >= 18 ? 4 : 2, barH = rowH - 2 * barTop;
    const scale = pw / (v1 - v0);
    for (let l = first; l <= last; l++) {
      const y = l * rowH - top, s = stats[l];
      if (l === laneMark) { ctx.fillStyle = "#fff4cc"; ctx.fillRect(0, y, width, rowH); }
      if (s.tasks && isWorker(l)) { // the lane's life: from its first task to its last
        const a = Math.max(LABEL_W, xOf(s.first)), b = Math.min(LABEL_W + pw, xOf(s.last));
        if (b > a) { ctx.fillStyle = "#f1f4f7"; ctx.fillRect(a, y + 1, b - a, rowH - 2); }
      }
      if (l > 0 && LANES[l][0] !== LANES[l - 1][0]) { // a new host
        ctx.fillStyle = "#aab4be"; ctx.fillRect(0, y, width, 1);
      }
      label(l, y, font);
      const small = !isWorker(l);
      let curK = -1, cx0 = 0, cx1 = 0;
      const flush = () => { if (curK >= 0) paths[curK].rect(cx0, y + barTop, cx1 - cx0, barH); };
      for (let q = firstFrom(l, v0), stop = laneFrom[l + 1]; q < stop; q++) {
        const t = byLane[q];
        if (start[t] > v1) break;
        if (end[t] < v0) continue;
        let x0 = LABEL_W + (start[t] - v0) * scale, x1 = LABEL_W + (end[t] - v0) * scale;
        if (x0 < LABEL_W) x0 = LABEL_W;
        if (x1 > LABEL_W + pw) x1 = LABEL_W + pw;
        const least = small || kind[t] !== okKind ? 3 : 1; // a failure is what one looks for
        if (x1 - x0 < least) x1 = x0 + least;
        else if (x1 - x0 >= 5) x1 -= 1; // a hairline between neighbours
        const k = kind[t];
        if (k === curK && x0 <= cx1 + 0.5) { if (x1 > cx1) cx1 = x1; continue; }
        flush();
        curK = k; cx0 = x0; cx1 = x1;
      }
      flush();
    }
    ctx.save();
    ctx.beginPath();
    ctx.rect(LABEL_W, 0, pw, viewH);
    ctx.clip();
    for (let k = 0; k < KINDS.length; k++) {
      ctx.fillStyle = color(k);
      ctx.globalAlpha = focus < 0 || focus === k ? 1 : 0.13;
      ctx.fill(paths[k]);
    }
    ctx.globalAlpha = 1;
    if (pinned >= 0) {
      const y = lane[pinned] * rowH - top;
      const x0 = xOf(start[pinned]), x1 = Math.max(xOf(end[pinned]), x0 + 2);
      ctx.strokeStyle = "#111";
      ctx.lineWidth = 2;
      ctx.strokeRect(x0 - 1, y + barTop - 1, x1 - x0 + 2, barH + 2);
    }
    ctx.restore();
    ctx.fillStyle = "#d5dbe1";
    ctx.fillRect(LABEL_W - 1, 0, 1, viewH);
  }

  function label(l, y, font) {
    const s = stats[l], share = isWorker(l) && wall ? pct(s.busy / wall) : "";
    ctx.fillStyle = "#66727f";
    ctx.textAlign = "right";
    ctx.fillText(share, LABEL_W - 8, y + rowH / 2);
    ctx.textAlign = "left";
    ctx.fillStyle = isWorker(l) ? "#1f2933" : "#66727f";
    ctx.fillText(fitted(l, LABEL_W - 56), 8, y + rowH / 2 + (font > 10 ? 0.5 : 0));
  }

  // A lane's label in `room` pixels: the host is what gives way (its domain first, then
  // its middle: node-00 and node-01 stay apart), so that the name and pid stay whole.
  const fits = (text, room) => ctx.measureText(text).width <= room;
  function fitted(l, room) {
    const full = laneLabel(l);
    if (fits(full, room)) return full;
    const rest = full.slice(LANES[l][0].length);
    const host = LANES[l][0].split(".")[0];
    if (fits(host + rest, room)) return host + rest;
    for (let keep = host.length - 1; keep >= 2; keep--) {
      const head = host.slice(0, Math.ceil(keep / 2)), tail = host.slice(host.length - Math.floor(keep / 2));
      if (fits(head + "…" + tail + rest, room)) return head + "…" + tail + rest;
    }
    let text = rest;
    while (text.length > 1 && !fits("…" + text, room)) text = text.slice(1);
    return "…" + text;
  }

  function draw() {
    const [tickList, step] = ticks();
    drawAxis(tickList, step);
    drawPlot(tickList);
    $("range").textContent = "showing " + dur(Math.max(0, v0)) + " to " + dur(Math.min(v1, wall)) +
      " of " + dur(wall);
  }

  function setView(a, b) {
    const least = 1e-6, most = full[1] - full[0];
    let span = Math.min(most, Math.max(least, b - a));
    a = Math.min(Math.max(a, full[0]), full[1] - span);
    v0 = a; v1 = a + span;
    draw();
  }
  const reset = () => setView(full[0], full[1]);

  // ---- finding a task under the pointer -----------------------------------------------
  function hit(x, y) {
    const l = Math.floor((y + box.scrollTop) / rowH);
    if (l < 0 || l >= L || x < LABEL_W) return -1;
    const t = tOf(x), tol = (4 / plotW()) * (v1 - v0);
    let best = -1, bestD = Infinity;
    for (let q = firstFrom(l, t - tol), stop = laneFrom[l + 1]; q < stop; q++) {
      const r = byLane[q];
      if (start[r] > t + tol) break;
      const d = t < start[r] ? start[r] - t : t > end[r] ? t - end[r] : 0;
      if (d <= tol && d < bestD) { best = r; bestD = d; }
    }
    return best;
  }

  function factsOf(row) {
    const k = KINDS[kind[row]], input = C.input[row];
    const out = [
      ["outcome", SAID[k] || k],
      [k === "ok" ? "value" : "error", S[C.text[row]]],
      ["input", input >= 0 ? S[input] : "(not known)"],
      ["process", laneLabel(lane[row])],
      ["ran", dur(end[row] - start[row]) + ", from " + dur(start[row]) + " to " + dur(end[row])],
      ["attempts", String(C.attempts[row])],
    ];
    if (C.cpu && C.cpu[row] >= 0) out.push(["cpu", dur(C.cpu[row] / 1e6)]);
    if (C.rss && C.rss[row] >= 0) out.push(["max rss", (C.rss[row] / 1048576).toFixed(1) + " MiB"]);
    return out;
  }

  function showTip(row, x, y) {
    if (row < 0) { tip.hidden = true; return; }
    tip.replaceChildren(el("div", { className: "tt" },
      el("span", { className: "sw", style: "background:" + color(kind[row]) }), " task " + indexOf(row)));
    for (const [k, v] of factsOf(row)) tip.append(el("div", {}, k + ": ", el("span", { className: "mono" }, v)));
    tip.hidden = false;
    // Beside the pointer, on the side with room: the tip never covers what it describes.
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let left = x + 14, top = y + 14;
    if (left + w > window.innerWidth - 4) left = Math.max(4, x - w - 14);
    if (top + h > window.innerHeight - 4) top = Math.max(4, y - h - 14);
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }

  function pin(row, zoom) {
    pinned = row;
    const panel = $("details");
    if (row < 0) {
      panel.hidden = true;
      history.replaceState(null, "", location.pathname + location.search);
      draw();
      return;
    }
    const close = el("button", { type: "button", title: "Close" }, "✕");
    close.addEventListener("click", () => pin(-1));
    const list = el("dl", { id: "pinned", "data-index": String(indexOf(row)) });
    for (const [k, v] of factsOf(row)) list.append(el("dt", {}, k), el("dd", { className: "mono" }, v));
    panel.replaceChildren(close, el("h2", {},
      el("span", { className: "sw", style: "background:" + color(kind[row]) }), " task " + indexOf(row)), list);
    panel.hidden = false;
    history.replaceState(null, "", "#task=" + indexOf(row));
    showLane(lane[row]);
    if (zoom) {
      const d = end[row] - start[row], around = Math.max(d * 3, (full[1] - full[0]) / 40);
      const mid = (start[row] + end[row]) / 2;
      if (start[row] < v0 || end[row] > v1 || v1 - v0 > 40 * around) setView(mid - around / 2, mid + around / 2);
    }
    draw();
  }

  function showLane(l) {
    const y = l * rowH;
    if (y < box.scrollTop || y + rowH > box.scrollTop + viewH) box.scrollTop = y - viewH / 2 + rowH / 2;
  }

  // ---- pointer and keys ---------------------------------------------------------------
  let drag = null;
  plot.addEventListener("mousedown", (e) => {
    drag = { x: e.clientX, v0, v1, moved: false };
    e.preventDefault();
  });
  axis.addEventListener("mousedown", (e) => {
    select = { a: e.offsetX, b: e.offsetX };
    e.preventDefault();
  });
  window.addEventListener("mousemove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x;
      if (Math.abs(dx) > 3) { drag.moved = true; plot.classList.add("dragging"); }
      if (drag.moved) {
        const dt = (dx / plotW()) * (drag.v1 - drag.v0);
        setView(drag.v0 - dt, drag.v1 - dt);
      }
    } else if (select) {
      select.b = Math.min(width, Math.max(LABEL_W, e.clientX - axis.getBoundingClientRect().left));
      draw();
    }
  });
  window.addEventListener("mouseup", (e) => {
    if (drag) {
      plot.classList.remove("dragging");
      if (!drag.moved) {
        const r = plot.getBoundingClientRect();
        pin(hit(e.clientX - r.left, e.clientY - r.top), false);
      }
      drag = null;
    } else if (select) {
      const a = Math.min(select.a, select.b), b = Math.max(select.a, select.b);
      select = null;
      if (b - a > 3) setView(tOf(Math.max(a, LABEL_W)), tOf(b)); else draw();
    }
  });
  plot.addEventListener("mousemove", (e) => { if (!drag) showTip(hit(e.offsetX, e.offsetY), e.clientX, e.clientY); });
  plot.addEventListener("mouseleave", () => { tip.hidden = true; });
  function wheel(e) {
    if (e.shiftKey) { box.scrollTop += e.deltaY || e.deltaX; e.preventDefault(); return; }
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    if (Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
      const dt = ((e.deltaX * unit) / plotW()) * (v1 - v0);
      setView(v0 + dt, v1 + dt);
      return;
    }
    const at = tOf(Math.max(LABEL_W, e.offsetX)), f = Math.exp(e.deltaY * unit * 0.0015);
    setView(at - (at - v0) * f, at + (v1 - at) * f);
  }
  plot.addEventListener("wheel", wheel, { passive: false });
  axis.addEventListener("wheel", wheel, { passive: false });
  plot.addEventListener("dblclick", reset);
  axis.addEventListener("dblclick", reset);
  $("reset").addEventListener("click", reset);
  box.addEventListener("scroll", () => draw());
  window.addEventListener("resize", () => { layout(); draw(); });
  window.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) return;
    const mid = (v0 + v1) / 2, half = (v1 - v0) / 2;
    if (e.key === "Escape") pin(-1);
    else if (e.key === "0") reset();
    else if (e.key === "+" || e.key === "=") setView(mid - half / 2, mid + half / 2);
    else if (e.key === "-") setView(mid - half * 2, mid + half * 2);
  });
  $("find").addEventListener("change", (e) => {
    if (e.target.value === "") return;
    const row = rowOf(Number(e.target.value));
    e.target.setCustomValidity(row < 0 ? "no task has this index" : "");
    e.target.reportValidity();
    if (row >= 0) pin(row, true);
  });

  // ---- the tables -------------------------------------------------------------------
  function table(id, heads, rows) {
    const head = el("tr", {}, ...heads.map(([h, n]) => el("th", { className: n ? "n" : "" }, h)));
    const body = el("tbody");
    for (const [cells, onClick, attrs] of rows) {
      const tr = el("tr", attrs || {}, ...cells.map(([v, cls]) => el("td", { className: cls || "" }, v)));
      tr.addEventListener("click", onClick);
      body.append(tr);
    }
    $(id).replaceChildren(el("thead", {}, head), body);
  }
  function shareBar(x) {
    return el("span", {}, el("span", { className: "share" }, el("i", { style: "width:" + (x * 100).toFixed(1) + "%" })), pct(x));
  }
  table("workers",
    [["process"], ["tasks", 1], ["busy", 1], ["busy share"], ["idle between tasks", 1], ["idle, tasks waiting", 1]],
    workerLanes.map((l) => {
      const s = stats[l];
      return [[[laneLabel(l), "lane"], [num(s.tasks), "n"], [dur(s.busy), "n"], [shareBar(wall ? s.busy / wall : 0)],
        [dur(s.idle), "n"], [dur(s.waited), "n"]],
        () => { laneMark = l; showLane(l); draw(); }, { "data-lane": laneLabel(l) }];
    }));
  table("slowest", [["task", 1], ["ran", 1], ["process"], ["outcome"]],
    slowest.map((row) => [[[String(indexOf(row)), "n"], [dur(end[row] - start[row]), "n"],
      [laneLabel(lane[row]), "lane"], [SAID[KINDS[kind[row]]] || KINDS[kind[row]]]],
      () => pin(row, true), { "data-index": String(indexOf(row)) }]));
  table("gaps", [["process"], ["from", 1], ["idle", 1]],
    gaps.map(([len, l, a, b]) => [[[laneLabel(l), "lane"], [dur(a), "n"], [dur(len), "n"]],
      () => { laneMark = l; showLane(l); const m = (b - a) * 0.5; setView(a - m, b + m); }]));

  // ---- start ----------------------------------------------------------------------
  if (!N) {
    $("lanes").replaceChildren(el("p", { className: "empty" }, "No results: nothing ran, or nothing had finished."));
    axis.hidden = true;
  } else {
    layout();
    draw();
    const wanted = /^#task=(-?\d+)$/.exec(location.hash);
    if (wanted && rowOf(Number(wanted[1])) >= 0) pin(rowOf(Number(wanted[1])), true);
  }
  document.body.setAttribute("data-lanes", String(L));
  document.body.setAttribute("data-ready-ms", performance.now().toFixed(1));
})();
