-- denet.export.html: reports a person opens in a browser, each one
-- self-contained file (data, style and script inline; no network).
--
--   html.offcpu(report)       -- off-CPU: flame graph (click to zoom, search
--                             -- to highlight), threads, call sites, verdict
--   html.stats(records, sum)  -- a monitor run: CPU, memory, I/O, threads and
--                             -- processes over time, and the summary
local json = require("denet.json")

local M = {}

-- the flame graph's category colours, as the SVG flame graph has them
M.COLORS = {
  sleep = "#7fb3d5", lock = "#e74c3c", io = "#e67e22", net = "#27ae60", ipc = "#8e44ad", poll = "#16a085",
  paging = "#d4ac0d", runqueue = "#95a5a6", other = "#bdc3c7",
}

local function esc(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

-- JSON for a <script> element: "</" cannot end it early
local function script_json(v)
  return (json.encode(v):gsub("</", "<\\/"))
end

local STYLE = [[
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.sub { color: #666; margin-bottom: 16px; }
.verdict { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 12px 0; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; text-align: right; }
th { border-bottom: 1px solid #ccc; font-weight: 600; } td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #f6f6f6; }
.bar { display: flex; gap: 8px; align-items: center; margin: 8px 0; flex-wrap: wrap; }
input[type=search] { padding: 4px 8px; width: 260px; } button { padding: 4px 10px; }
#flame { width: 100%; border: 1px solid #ddd; background: #fdfdfd; }
#flame rect { stroke: #fff; stroke-width: 0.5; cursor: pointer; }
#flame rect.match { fill: #e040fb !important; }
#flame text { font: 11px Verdana, sans-serif; pointer-events: none; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border-radius: 3px; color: #111; }
#info { color: #444; min-height: 1.4em; }
.chart { margin: 8px 0 20px; } .chart svg { width: 100%; height: 180px; border: 1px solid #ddd; background: #fff; }
.chart polyline { fill: none; stroke-width: 1.5; }
]]

---------------------------------------------------------------------------
-- off-CPU

local FLAME_JS = [[
(function () {
  var D = JSON.parse(document.getElementById('data').textContent);
  var COLORS = D.colors, ROW = 17, PAD = 10;
  // stacks -> tree: all -> comm -> frames (root first)
  var root = { name: 'all', us: 0, kids: {}, list: [], cats: {}, parent: null, depth: 0 };
  D.stacks.forEach(function (s) {
    var node = root, path = [s.comm].concat(s.frames);
    root.us += s.us;
    path.forEach(function (name) {
      var k = node.kids[name];
      if (!k) {
        k = { name: name, us: 0, kids: {}, list: [], cats: {}, parent: node, depth: node.depth + 1 };
        node.kids[name] = k; node.list.push(k);
      }
      k.us += s.us; k.cats[s.category] = (k.cats[s.category] || 0) + s.us;
      node = k;
    });
  });
  var maxDepth = 0;
  (function sort(n) {
    n.list.sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : 0; });
    maxDepth = Math.max(maxDepth, n.depth);
    n.list.forEach(sort);
  })(root);
  function category(n) {
    var best = 'other', v = -1;
    for (var c in n.cats) if (n.cats[c] > v) { v = n.cats[c]; best = c; }
    return best;
  }
  var svg = document.getElementById('flame'), NS = 'http://www.w3.org/2000/svg';
  var view = root, query = '';
  var info = document.getElementById('info'), matched = document.getElementById('matched');
  function fmt(us) { return us >= 1e6 ? (us / 1e6).toFixed(2) + ' s' : us >= 1e3 ? (us / 1e3).toFixed(2) + ' ms' : us.toFixed(0) + ' us'; }
  function matches(n) {
    if (!query) return false;
    try { return new RegExp(query).test(n.name); } catch (e) { return n.name.indexOf(query) >= 0; }
  }
  function render() {
    var width = svg.clientWidth || 1200, height = (maxDepth + 1) * ROW + 2 * PAD;
    svg.setAttribute('height', height);
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var scale = (width - 2 * PAD) / Math.max(view.us, 1e-9), matchedUs = 0, counted = [];
    function box(n, x, w) {
      var g = document.createElementNS(NS, 'g'), r = document.createElementNS(NS, 'rect');
      var y = height - PAD - (n.depth + 1) * ROW;
      r.setAttribute('x', x); r.setAttribute('y', y); r.setAttribute('width', Math.max(w, 0));
      r.setAttribute('height', ROW - 1); r.setAttribute('rx', 2);
      r.setAttribute('fill', n.name === '-' ? '#cccccc' : (COLORS[category(n)] || COLORS.other));
      r.setAttribute('class', 'frame' + (matches(n) ? ' match' : ''));
      r.setAttribute('data-name', n.name);
      var t = document.createElementNS(NS, 'title');
      t.textContent = n.name + ' (' + fmt(n.us) + ', ' + (100 * n.us / root.us).toFixed(2) + '%, ' + category(n) + ')';
      g.appendChild(t); g.appendChild(r);
      var chars = Math.floor((w - 6) / 7);
      if (chars >= 3) {
        var label = document.createElementNS(NS, 'text');
        label.setAttribute('x', x + 3); label.setAttribute('y', y + 12);
        label.textContent = n.name.length <= chars ? n.name : n.name.slice(0, chars - 2) + '..';
        g.appendChild(label);
      }
      r.addEventListener('click', function () { zoom(n); });
      r.addEventListener('mouseover', function () { info.textContent = t.textContent; });
      svg.appendChild(g);
    }
    // the ancestors of the view span the whole width
    for (var a = view.parent; a; a = a.parent) box(a, PAD, width - 2 * PAD);
    (function walk(n, x) {
      var w = n.us * scale;
      if (w < 0.3) return;
      box(n, x, w);
      if (matches(n) && counted.every(function (c) { return !isAncestor(c, n); })) { matchedUs += n.us; counted.push(n); }
      var cx = x;
      n.list.forEach(function (k) { walk(k, cx); cx += k.us * scale; });
    })(view, PAD);
    matched.textContent = query ? 'Matched: ' + (100 * matchedUs / view.us).toFixed(1) + '% of ' + (view === root ? 'all' : view.name) : '';
    document.getElementById('reset').disabled = view === root;
  }
  function isAncestor(a, n) { for (var p = n.parent; p; p = p.parent) if (p === a) return true; return false; }
  function zoom(n) { view = n.parent && n.us > 0 ? n : root; render(); }
  document.getElementById('reset').addEventListener('click', function () { zoom(root); });
  document.getElementById('search').addEventListener('input', function (e) { query = e.target.value; render(); });
  window.addEventListener('resize', render);
  window.denetFlame = { zoom: zoom, root: root, render: render };
  render();
})();
]]

local function fmt_us(us)
  if us >= 1e6 then
    return string.format("%.2f s", us / 1e6)
  elseif us >= 1e3 then
    return string.format("%.2f ms", us / 1e3)
  end
  return string.format("%d us", math.floor(us + 0.5))
end

--- The off-CPU report (denet.offcpu's report) as one HTML page.
function M.offcpu(report, title)
  title = title or "Off-CPU report"
  local stacks = {}
  for i, s in ipairs(report.stacks or {}) do
    stacks[i] = { comm = s.comm or "?", frames = json.array(s.frames), us = s.us, category = s.category }
  end
  local out = {
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8"><title>' .. esc(title) .. "</title>",
    "<style>" .. STYLE .. "</style></head><body>",
    "<h1>" .. esc(title) .. "</h1>",
    string.format('<div class="sub">denet offcpu, %s traced; %d threads, %d stacks</div>',
      fmt_us(report.duration_us or 0), #(report.threads or {}), #stacks),
    '<div class="verdict" id="verdict">' .. esc(report.verdict or "") .. "</div>",
    "<h2>Flame graph: where threads waited (width = off-CPU time)</h2>",
    '<div class="bar"><input type="search" id="search" placeholder="search frames (regex)"> '
      .. '<button id="reset" disabled>reset zoom</button> <span id="matched"></span></div>',
    '<div class="legend">',
  }
  local cats = {}
  for c in pairs(M.COLORS) do
    cats[#cats + 1] = c
  end
  table.sort(cats)
  for _, c in ipairs(cats) do
    out[#out + 1] = string.format('<span style="background:%s">%s</span>', M.COLORS[c], c)
  end
  out[#out + 1] = "</div>"
  out[#out + 1] = '<svg id="flame" xmlns="http://www.w3.org/2000/svg"></svg><div id="info"></div>'
  -- threads
  out[#out + 1] = "<h2>Threads</h2><table id=\"threads\"><tr><th class=l>thread</th><th>tid</th><th>off-CPU</th>"
    .. "<th>on-CPU</th><th>share blocked</th><th class=l>by category</th></tr>"
  for _, t in ipairs(report.threads or {}) do
    local parts = {}
    local cs = {}
    for c in pairs(t.by_category or {}) do
      cs[#cs + 1] = c
    end
    table.sort(cs, function(a, b)
      return t.by_category[a] > t.by_category[b]
    end)
    for _, c in ipairs(cs) do
      parts[#parts + 1] = string.format("%s %s", c, fmt_us(t.by_category[c]))
    end
    out[#out + 1] = string.format("<tr><td class=l>%s</td><td>%d</td><td>%s</td><td>%s</td><td>%.1f%%</td>"
      .. "<td class=l>%s</td></tr>", esc(t.comm), t.tid, fmt_us(t.offcpu_us), fmt_us(t.oncpu_us or 0),
      100 * (t.share or 0), esc(table.concat(parts, ", ")))
  end
  out[#out + 1] = "</table>"
  -- call sites
  out[#out + 1] = "<h2>Call sites</h2><table id=\"sites\"><tr><th class=l>thread</th><th class=l>category</th>"
    .. "<th class=l>where</th><th>time</th><th>blocks</th></tr>"
  for i, s in ipairs(report.sites or {}) do
    if i > 30 then
      break
    end
    out[#out + 1] = string.format("<tr><td class=l>%s (%d)</td><td class=l>%s</td><td class=l>%s</td><td>%s</td>"
      .. "<td>%d</td></tr>", esc(s.comm), s.tid, esc(s.category), esc(s.site), fmt_us(s.us), s.count)
  end
  out[#out + 1] = "</table>"
  -- syscalls
  out[#out + 1] = "<h2>Blocking syscalls</h2><table id=\"syscalls\"><tr><th class=l>syscall</th><th>blocks</th>"
    .. "<th>time</th><th>longest</th></tr>"
  for _, s in ipairs(report.syscalls or {}) do
    out[#out + 1] = string.format("<tr><td class=l>%s</td><td>%d</td><td>%s</td><td>%s</td></tr>", esc(s.name),
      s.blocks, fmt_us(s.us), fmt_us(s.max_us))
  end
  out[#out + 1] = "</table>"
  out[#out + 1] = '<script type="application/json" id="data">'
    .. script_json({ stacks = json.array(stacks), colors = M.COLORS }) .. "</script>"
  out[#out + 1] = "<script>" .. FLAME_JS .. "</script>"
  out[#out + 1] = "</body></html>"
  return table.concat(out, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- a monitor run over time

local CHARTS_JS = [[
(function () {
  var D = JSON.parse(document.getElementById('data').textContent);
  var NS = 'http://www.w3.org/2000/svg', PAD = 36;
  function fmt(v, unit) {
    if (unit === 'bytes' || unit === 'bytes/s') {
      var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
      while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
      return v.toFixed(i ? 1 : 0) + ' ' + u[i] + (unit === 'bytes/s' ? '/s' : '');
    }
    return (Math.round(v * 10) / 10) + (unit ? ' ' + unit : '');
  }
  D.charts.forEach(function (c) {
    var box = document.getElementById(c.id), svg = box.querySelector('svg');
    var w = svg.clientWidth || 900, h = 180;
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    var t0 = D.t[0], t1 = D.t[D.t.length - 1], span = Math.max(t1 - t0, 1e-9), max = 0;
    c.series.forEach(function (s) { s.v.forEach(function (v) { if (v > max) max = v; }); });
    if (max <= 0) max = 1;
    function X(t) { return PAD + (w - 2 * PAD) * (t - t0) / span; }
    function Y(v) { return h - 20 - (h - 40) * v / max; }
    var axis = document.createElementNS(NS, 'text');
    axis.setAttribute('x', 4); axis.setAttribute('y', 14); axis.setAttribute('font-size', 11);
    axis.textContent = 'max ' + fmt(max, c.unit) + '   over ' + span.toFixed(1) + ' s';
    svg.appendChild(axis);
    c.series.forEach(function (s) {
      var pl = document.createElementNS(NS, 'polyline'), pts = [];
      s.v.forEach(function (v, i) { pts.push(X(D.t[i]).toFixed(1) + ',' + Y(v).toFixed(1)); });
      pl.setAttribute('points', pts.join(' '));
      pl.setAttribute('stroke', s.color);
      pl.setAttribute('data-series', s.name);
      var title = document.createElementNS(NS, 'title');
      title.textContent = s.name;
      pl.appendChild(title);
      svg.appendChild(pl);
    });
  });
})();
]]

local function num(v)
  return tonumber(v) or 0
end

--- A monitor run (its tree/sample records and summary) as one HTML page
--- of charts: one point per record.
function M.stats(records, summary, title)
  title = title or "denet run"
  local t, cpu, rss, pss, rd, wr, thr, procs = {}, {}, {}, {}, {}, {}, {}, {}
  local prev
  for _, rec in ipairs(records) do
    local a = rec.kind == "tree" and rec.aggregated or rec
    local ts = num(rec.ts_ms) / 1000
    t[#t + 1] = ts
    cpu[#cpu + 1] = num(a.cpu_usage)
    rss[#rss + 1] = num(a.mem_rss_kb) * 1024
    pss[#pss + 1] = num(a.mem_pss_kb) * 1024
    thr[#thr + 1] = num(a.thread_count)
    procs[#procs + 1] = num(a.process_count or 1)
    -- I/O as rates between records (the first: none yet)
    local r, w = num(a.disk_read_bytes), num(a.disk_write_bytes)
    if prev and ts > prev.ts then
      rd[#rd + 1] = math.max(0, (r - prev.r) / (ts - prev.ts))
      wr[#wr + 1] = math.max(0, (w - prev.w) / (ts - prev.ts))
    else
      rd[#rd + 1], wr[#wr + 1] = 0, 0
    end
    prev = { ts = ts, r = r, w = w }
  end
  local charts = {
    { id = "cpu", title = "CPU (% of one core)", unit = "%",
      series = { { name = "cpu", v = cpu, color = "#d62728" } } },
    { id = "memory", title = "Memory", unit = "bytes", series = { { name = "rss", v = rss, color = "#1f77b4" },
      { name = "pss", v = pss, color = "#17becf" } } },
    { id = "io", title = "Storage I/O", unit = "bytes/s", series = { { name = "read", v = rd, color = "#2ca02c" },
      { name = "written", v = wr, color = "#ff7f0e" } } },
    { id = "threads", title = "Threads", unit = "", series = { { name = "threads", v = thr, color = "#9467bd" } } },
    { id = "processes", title = "Processes", unit = "", series = { { name = "processes", v = procs,
      color = "#8c564b" } } },
  }
  local out = {
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8"><title>' .. esc(title) .. "</title>",
    "<style>" .. STYLE .. "</style></head><body>",
    "<h1>" .. esc(title) .. "</h1>",
    string.format('<div class="sub">%d samples</div>', #t),
  }
  for _, c in ipairs(charts) do
    local legend = {}
    for _, s in ipairs(c.series) do
      legend[#legend + 1] = string.format('<span style="color:%s">&#9644; %s</span>', s.color, esc(s.name))
    end
    out[#out + 1] = string.format('<div class="chart" id="%s"><h2>%s %s</h2><svg xmlns="http://www.w3.org/2000/svg">'
      .. "</svg></div>", c.id, esc(c.title), table.concat(legend, " "))
  end
  out[#out + 1] = "<h2>Summary</h2><table id=\"summary\">"
  local keys = {}
  for k, v in pairs(summary or {}) do
    if type(v) ~= "table" and k ~= "kind" then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = summary[k]
    out[#out + 1] = string.format("<tr><td class=l>%s</td><td>%s</td></tr>", esc(k), v == json.null and "-" or esc(v))
  end
  out[#out + 1] = "</table>"
  for _, c in ipairs(charts) do
    for _, sr in ipairs(c.series) do
      json.array(sr.v)
    end
  end
  out[#out + 1] = '<script type="application/json" id="data">' .. script_json({ t = json.array(t), charts = charts })
    .. "</script>"
  out[#out + 1] = "<script>" .. CHARTS_JS .. "</script>"
  out[#out + 1] = "</body></html>"
  return table.concat(out, "\n") .. "\n"
end

return M
