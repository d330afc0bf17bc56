-- denet.metrics: the monitor's figures as Prometheus metrics.
--
--   local metrics = require("denet.metrics")
--   local fams = metrics.from_record(rec, { target = "make", pid = 1234 })
--   metrics.add_syscalls(fams, report, ident)   -- a denet.syscalls report
--   metrics.add_offcpu(fams, offcpu_fields, ident)
--   metrics.text(fams)          -- Prometheus text format 0.0.4
--   metrics.openmetrics(fams)   -- OpenMetrics 1.0, ending in "# EOF"
--
-- Names follow Prometheus conventions: base units (seconds, bytes),
-- `_total` on counters, dimensions as labels; every series carries
-- `target` (the command's name) and `pid` (the root). Label sets are
-- bounded: syscalls and errnos are finite, threads are the top N plus
-- comm="other". A past run (JSONL) becomes timestamped OpenMetrics with
-- metrics.series() and metrics.openmetrics_series().
local M = {}

M.TOP_THREADS = 10

-- log2 buckets of denet.syscalls (slot i: calls under 2^(i-1) ns) kept as
-- histogram bounds: every other one from 2^10 ns (1 us) to 2^36 ns (69 s)
M.LE_SLOTS = {}
for i = 11, 37, 2 do
  M.LE_SLOTS[#M.LE_SLOTS + 1] = i
end

-- A family: { name, type = "counter"|"gauge"|"histogram", unit, help,
-- samples = { { suffix, labels = { {k, v}, ... }, value } } }. The name is
-- the OpenMetrics family name (no _total).
local function family(fams, name, typ, unit, help)
  local f = fams.by_name[name]
  if not f then
    f = { name = name, type = typ, unit = unit, help = help, samples = {} }
    fams.by_name[name] = f
    fams[#fams + 1] = f
  end
  return f
end

local function labels(ident, extra)
  local l = { { "target", ident.target or "" }, { "pid", tostring(ident.pid or "") } }
  for _, kv in ipairs(extra or {}) do
    l[#l + 1] = kv
  end
  return l
end

-- A value that is not a number (absent, or a recorded file's odd field)
-- adds no sample.
local function add(f, suffix, ident, extra, value)
  value = tonumber(value)
  if value == nil then
    return
  end
  f.samples[#f.samples + 1] = { suffix = suffix, labels = labels(ident, extra), value = value }
end

-- A recorded file's field as a table (anything else: an empty one), and
-- its keys in a stable order, whatever JSON gave them.
local function tbl(v)
  return type(v) == "table" and v or {}
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do
    ks[#ks + 1] = tostring(k)
  end
  table.sort(ks)
  return ks
end

-- t[k] for a key that sorted_keys turned into a string
local function at(t, k)
  local v = t[k]
  if v == nil then
    v = t[tonumber(k)]
  end
  return tonumber(v)
end

--- An empty set of families.
function M.new()
  return { by_name = {} }
end

local function kb(v)
  v = tonumber(v)
  return v and v * 1024
end

-- perf counter field -> metric name, help
local PERF = {
  { "task_clock_ns", "denet_perf_task_clock_seconds", "task-clock: time the tree's tasks ran (perf counter)", 1e-9 },
  { "context_switches", "denet_perf_context_switches", "context switches of the tree (perf counter)" },
  { "cpu_migrations", "denet_perf_cpu_migrations", "moves of the tree's tasks between CPUs (perf counter)" },
  { "cycles", "denet_perf_cycles", "CPU cycles of the tree (hardware counter)" },
  { "instructions", "denet_perf_instructions", "instructions the tree retired (hardware counter)" },
  { "cache_refs", "denet_perf_cache_references", "cache references of the tree (hardware counter)" },
  { "cache_misses", "denet_perf_cache_misses", "cache misses of the tree (hardware counter)" },
  { "branch_misses", "denet_perf_branch_misses", "mispredicted branches of the tree (hardware counter)" },
  { "stalled_backend", "denet_perf_stalled_backend_cycles", "cycles the backend stalled (hardware counter)" },
}

--- The families of the monitor's other sources (denet.monitor.sources) in
--- figures a: perf_counters (the run's totals: counters), psi_*, energy
--- (joules so far), gpu (the last sample's).
function M.add_sources(fams, a, ident)
  local pc = tbl(a.perf_counters)
  for _, p in ipairs(PERF) do
    if tonumber(pc[p[1]]) then
      add(family(fams, p[2], "counter", p[4] and "seconds" or nil, p[3]), "_total", ident, nil,
        tonumber(pc[p[1]]) * (p[4] or 1))
    end
  end
  if tonumber(pc.page_faults_minor) then
    local pf = family(fams, "denet_perf_page_faults", "counter", nil, "page faults of the tree (perf counter)")
    add(pf, "_total", ident, { { "kind", "minor" } }, pc.page_faults_minor)
    add(pf, "_total", ident, { { "kind", "major" } }, pc.page_faults_major)
  end
  for _, r in ipairs({ { "psi_cpu", "cpu" }, { "psi_mem", "memory" }, { "psi_io", "io" } }) do
    local v = type(a[r[1]]) == "table" and a[r[1]]
    if v and tonumber(v.some_total_us) then
      local f = family(fams, "denet_pressure_stalled_seconds", "counter", "seconds",
        "time some (or all) tasks stalled on a resource, in the tree's cgroup or the system (PSI)")
      add(f, "_total", ident, { { "resource", r[2] }, { "kind", "some" } }, v.some_total_us / 1e6)
      add(f, "_total", ident, { { "resource", r[2] }, { "kind", "full" } }, (tonumber(v.full_total_us) or 0) / 1e6)
    end
  end
  local e = tbl(a.energy)
  if tonumber(e.package_joules) then
    local f = family(fams, "denet_energy_joules", "counter", "joules", "RAPL energy since monitoring began")
    add(f, "_total", ident, { { "domain", "package" } }, e.package_joules)
    add(f, "_total", ident, { { "domain", "dram" } }, e.dram_joules)
    add(f, "_total", ident, { { "domain", "tree_estimate" } }, e.process_joules)
  end
  local g = type(a.gpu) == "table" and a.gpu
  if g then
    local util = family(fams, "denet_gpu_utilization_ratio", "gauge", "ratio", "GPU busy time, per device")
    local used = family(fams, "denet_gpu_memory_used_bytes", "gauge", "bytes", "GPU memory in use, per device")
    local total = family(fams, "denet_gpu_memory_total_bytes", "gauge", "bytes", "GPU memory, per device")
    local temp = family(fams, "denet_gpu_temperature_celsius", "gauge", "celsius", "GPU temperature, per device")
    local power = family(fams, "denet_gpu_power_watts", "gauge", "watts", "GPU power draw, per device")
    for _, d in ipairs(tbl(g.system_metrics)) do
      local l = { { "device", tostring(d.device_index) }, { "name", tostring(d.name) } }
      add(util, "", ident, l, tonumber(d.system_utilization_gpu) and d.system_utilization_gpu / 100)
      add(used, "", ident, l, d.memory_used)
      add(total, "", ident, l, d.memory_total)
      add(temp, "", ident, l, d.temperature)
      add(power, "", ident, l, d.power_watts)
    end
    local pm = family(fams, "denet_gpu_process_memory_bytes", "gauge", "bytes",
      "GPU memory the tree's processes hold, per device")
    local by = {}
    for _, p in ipairs(tbl(g.process_data)) do
      local k = tostring(p.device_index or 0)
      by[k] = (by[k] or 0) + (tonumber(p.memory_usage) or 0)
    end
    for _, k in ipairs(sorted_keys(by)) do
      add(pm, "", ident, { { "device", k } }, by[k])
    end
  end
end

--- The families of a monitor record (`tree`: its aggregated metrics;
--- `sample`: the root's) for ident = { target, pid }.
function M.from_record(rec, ident, fams)
  fams = fams or M.new()
  local a = rec.kind == "tree" and rec.aggregated or rec
  if type(a) ~= "table" then
    return fams
  end
  add(family(fams, "denet_cpu_seconds", "counter", "seconds", "CPU time (user and system) of the process tree"),
    "_total", ident, nil, a.cpu_time_secs)
  add(family(fams, "denet_memory_rss_bytes", "gauge", "bytes", "resident set size, summed over the tree"), "",
    ident, nil, kb(a.mem_rss_kb))
  add(family(fams, "denet_memory_pss_bytes", "gauge", "bytes", "proportional set size, summed over the tree"), "",
    ident, nil, kb(a.mem_pss_kb))
  add(family(fams, "denet_memory_uss_bytes", "gauge", "bytes",
    "unique set size (pages no other process maps), summed over the tree"), "", ident, nil, kb(a.mem_uss_kb))
  add(family(fams, "denet_memory_virtual_bytes", "gauge", "bytes", "virtual memory size, summed over the tree"),
    "", ident, nil, kb(a.mem_vms_kb))
  add(family(fams, "denet_disk_read_bytes", "counter", "bytes", "bytes read from storage by the tree"), "_total",
    ident, nil, a.disk_read_bytes)
  add(family(fams, "denet_disk_written_bytes", "counter", "bytes", "bytes written to storage by the tree"),
    "_total", ident, nil, a.disk_write_bytes)
  add(family(fams, "denet_syscall_read_bytes", "counter", "bytes",
    "bytes read by read-like syscalls, cache hits included"), "_total", ident, nil, a.syscall_read_bytes)
  add(family(fams, "denet_syscall_written_bytes", "counter", "bytes", "bytes written by write-like syscalls"),
    "_total", ident, nil, a.syscall_write_bytes)
  add(family(fams, "denet_processes", "gauge", nil, "live processes of the tree"), "", ident, nil,
    a.process_count or 1)
  add(family(fams, "denet_threads", "gauge", nil, "threads of the tree"), "", ident, nil, a.thread_count)
  add(family(fams, "denet_open_fds", "gauge", nil, "open file descriptors of the tree"), "", ident, nil,
    a.fd_count)
  local cs = family(fams, "denet_context_switches", "counter", nil, "context switches of the tree's threads")
  add(cs, "_total", ident, { { "kind", "voluntary" } }, a.ctx_switches_voluntary)
  add(cs, "_total", ident, { { "kind", "involuntary" } }, a.ctx_switches_involuntary)
  local pf = family(fams, "denet_page_faults", "counter", nil, "page faults of the tree")
  add(pf, "_total", ident, { { "kind", "minor" } }, a.page_faults_cached)
  add(pf, "_total", ident, { { "kind", "major" } }, a.page_faults_disk)
  if a.processes_started then
    add(family(fams, "denet_processes_started", "counter", nil, "processes started in the tree"), "_total", ident,
      nil, a.processes_started)
  end
  if a.processes_exited then
    add(family(fams, "denet_processes_exited", "counter", nil, "processes of the tree that exited"), "_total",
      ident, nil, a.processes_exited)
  end
  M.add_sources(fams, a, ident)
  local ebpf = a.ebpf
  if type(ebpf) == "table" then
    if type(ebpf.offcpu) == "table" then
      M.add_offcpu(fams, ebpf.offcpu, ident)
    end
    if type(ebpf.network) == "table" then
      add(family(fams, "denet_network_received_bytes", "counter", "bytes",
        "bytes the tree received over TCP/UDP sockets (BPF)"), "_total", ident, nil, ebpf.network.rx_bytes)
      add(family(fams, "denet_network_sent_bytes", "counter", "bytes",
        "bytes the tree sent over TCP/UDP sockets (BPF)"), "_total", ident, nil, ebpf.network.tx_bytes)
    end
    if type(ebpf.syscalls) == "table" and not fams.syscalls_done then
      -- a record holds the top syscalls only (a live run adds the full
      -- report instead, with add_syscalls)
      local f = family(fams, "denet_syscalls", "counter", nil, "syscalls made by the tree")
      for _, s in ipairs(tbl(ebpf.syscalls.top_syscalls)) do
        if type(s) == "table" and type(s.name) == "string" then
          add(f, "_total", ident, { { "syscall", s.name } }, s.count)
        end
      end
    end
  end
  return fams
end

--- Syscall families from a denet.syscalls report (all rows): counts,
--- errors by errno and, when it has latency, a histogram in seconds.
function M.add_syscalls(fams, report, ident)
  fams.syscalls_done = true
  local count = family(fams, "denet_syscalls", "counter", nil, "syscalls made by the tree")
  local errs = family(fams, "denet_syscall_errors", "counter", nil, "syscalls that failed, by errno")
  local hist
  for _, r in ipairs(report.syscalls or {}) do
    add(count, "_total", ident, { { "syscall", r.name } }, r.count)
    local names = {}
    for e in pairs(r.errors or {}) do
      names[#names + 1] = e
    end
    table.sort(names)
    for _, e in ipairs(names) do
      add(errs, "_total", ident, { { "syscall", r.name }, { "errno", e } }, r.errors[e])
    end
    if r.hist then
      hist = hist or family(fams, "denet_syscall_duration_seconds", "histogram", "seconds",
        "time in syscalls (log2 buckets)")
      local cum, slot = 0, 0
      for _, i in ipairs(M.LE_SLOTS) do
        while slot < i do
          slot = slot + 1
          cum = cum + (r.hist[slot] or 0)
        end
        add(hist, "_bucket", ident, { { "syscall", r.name }, { "le", M.number(2 ^ (i - 1) / 1e9) } }, cum)
      end
      add(hist, "_bucket", ident, { { "syscall", r.name }, { "le", "+Inf" } }, r.timed)
      add(hist, "_count", ident, { { "syscall", r.name } }, r.timed)
      add(hist, "_sum", ident, { { "syscall", r.name } }, r.total_ns / 1e9)
    end
  end
end

--- Off-CPU families from the monitor's off-CPU fields (denet.offcpu
--- monitor_fields: by_category_ns, thread_stats): seconds per category,
--- and per thread (the top N, the rest as comm="other") and category.
--- Fields of the wrong type (a recorded file is input) add nothing.
function M.add_offcpu(fams, oc, ident)
  local cat = family(fams, "denet_offcpu_seconds", "counter", "seconds",
    "time the tree's threads spent off CPU, by why")
  local by_cat = tbl(oc.by_category_ns)
  for _, c in ipairs(sorted_keys(by_cat)) do
    local ns = at(by_cat, c)
    add(cat, "_total", ident, { { "category", c } }, ns and ns / 1e9)
  end
  local list = {}
  for key, t in pairs(tbl(oc.thread_stats)) do
    if type(t) == "table" then
      list[#list + 1] = { key = tostring(key), t = t, ns = tonumber(t.time_ns) or 0 }
    end
  end
  table.sort(list, function(x, y)
    if x.ns ~= y.ns then
      return x.ns > y.ns
    end
    return x.key < y.key
  end)
  local th = family(fams, "denet_offcpu_thread_seconds", "counter", "seconds",
    "off-CPU time of the top threads (the rest: comm=\"other\"), by why")
  local other = {}
  for i, e in ipairs(list) do
    local by = tbl(e.t.by_category)
    if i <= M.TOP_THREADS then
      local tid = e.key:match(":(%d+)$") or e.key
      local comm = type(e.t.comm) == "string" and e.t.comm or "?"
      for _, c in ipairs(sorted_keys(by)) do
        local ns = at(by, c)
        add(th, "_total", ident, { { "comm", comm }, { "tid", tid }, { "category", c } }, ns and ns / 1e9)
      end
    else
      for _, c in ipairs(sorted_keys(by)) do
        other[c] = (other[c] or 0) + (at(by, c) or 0)
      end
    end
  end
  for _, c in ipairs(sorted_keys(other)) do
    add(th, "_total", ident, { { "comm", "other" }, { "tid", "" }, { "category", c } }, other[c] / 1e9)
  end
end

---------------------------------------------------------------------------
-- exposition

--- A number as the formats write it: integers without a fraction, others
--- in the fewest digits that read back the same, +Inf/-Inf/NaN by name.
function M.number(v)
  if v ~= v then
    return "NaN"
  elseif v == math.huge then
    return "+Inf"
  elseif v == -math.huge then
    return "-Inf"
  elseif v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return string.format("%d", v)
  end
  -- the shortest that reads back as the same number
  for digits = 15, 16 do
    local s = string.format("%." .. digits .. "g", v)
    if tonumber(s) == v then
      return s
    end
  end
  return string.format("%.17g", v)
end

local function escape_label(s)
  return (tostring(s):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function escape_help(s)
  return (tostring(s):gsub("\\", "\\\\"):gsub("\n", "\\n"))
end

local function label_text(l)
  local parts = {}
  for i, kv in ipairs(l) do
    parts[i] = kv[1] .. '="' .. escape_label(kv[2]) .. '"'
  end
  return #parts > 0 and ("{" .. table.concat(parts, ",") .. "}") or ""
end

--- Prometheus text format 0.0.4.
function M.text(fams)
  local out = {}
  for _, f in ipairs(fams) do
    if #f.samples > 0 then
      local name = f.type == "counter" and (f.name .. "_total") or f.name
      out[#out + 1] = "# HELP " .. name .. " " .. escape_help(f.help)
      out[#out + 1] = "# TYPE " .. name .. " " .. f.type
      for _, s in ipairs(f.samples) do
        out[#out + 1] = f.name .. s.suffix .. label_text(s.labels) .. " " .. M.number(s.value)
      end
    end
  end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

local function om_header(out, f)
  out[#out + 1] = "# TYPE " .. f.name .. " " .. f.type
  if f.unit then
    out[#out + 1] = "# UNIT " .. f.name .. " " .. f.unit
  end
  out[#out + 1] = "# HELP " .. f.name .. " " .. escape_help(f.help)
end

--- OpenMetrics 1.0 text.
function M.openmetrics(fams)
  local out = {}
  for _, f in ipairs(fams) do
    if #f.samples > 0 then
      om_header(out, f)
      for _, s in ipairs(f.samples) do
        out[#out + 1] = f.name .. s.suffix .. label_text(s.labels) .. " " .. M.number(s.value)
      end
    end
  end
  out[#out + 1] = "# EOF"
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

--- Collect families of many moments: series:add(ts_seconds, fams) in
--- time order, then metrics.openmetrics_series(series).
function M.series()
  local s = { order = {}, fams = {} }
  function s:add(ts, fams)
    for _, f in ipairs(fams) do
      local e = self.fams[f.name]
      if not e then
        e = { f = f, order = {}, by = {} }
        self.fams[f.name] = e
        self.order[#self.order + 1] = f.name
      end
      -- a metric is a label set without le: a histogram's buckets, count
      -- and sum at one moment make one point of it
      for _, smp in ipairs(f.samples) do
        local id = {}
        for _, kv in ipairs(smp.labels) do
          if kv[1] ~= "le" then
            id[#id + 1] = kv
          end
        end
        local key = label_text(id)
        local metric = e.by[key]
        if not metric then
          metric = { points = {} }
          e.by[key] = metric
          e.order[#e.order + 1] = metric
        end
        local last = metric.points[#metric.points]
        if not last or last.ts ~= ts then
          last = { ts = ts, lines = {} }
          metric.points[#metric.points + 1] = last
        end
        last.lines[#last.lines + 1] = f.name .. smp.suffix .. label_text(smp.labels) .. " " .. M.number(smp.value)
      end
    end
  end
  return s
end

--- OpenMetrics of series, every sample with its timestamp (seconds), the
--- points of one metric together and in time order (as promtool's
--- backfill wants them).
function M.openmetrics_series(s)
  local out = {}
  for _, name in ipairs(s.order) do
    local e = s.fams[name]
    om_header(out, e.f)
    for _, metric in ipairs(e.order) do
      for _, pt in ipairs(metric.points) do
        local ts = " " .. string.format("%.3f", pt.ts)
        for _, line in ipairs(pt.lines) do
          out[#out + 1] = line .. ts
        end
      end
    end
  end
  out[#out + 1] = "# EOF"
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

return M
