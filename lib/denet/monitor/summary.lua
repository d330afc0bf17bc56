-- denet.monitor.summary: the summary of a run, computed the same way live
-- (--stats FILE, Python's get_summary()) and from a recorded file (`denet
-- stats`), including the original denet's untagged legacy files.
--
--   local summary = require("denet.monitor.summary")
--   local s = summary.new()
--   s:add(record) ...            -- env, metadata, tree, sample records
--   local rec = s:result(exit_code, final_totals)
local json = require("denet.json")

local M = {}

local function round(x, digits)
  return require("denet.util").round(x, digits or 3)
end

--- The kind of a record: its "kind", or for the original's untagged
--- lines what its fields say (a tree has aggregated, a sample ts_ms and
--- cpu_usage, metadata pid, cmd and t0_ms, env lscpu). nil: not a record.
function M.kind_of(rec)
  if type(rec) ~= "table" then
    return nil
  end
  if type(rec.kind) == "string" then
    return rec.kind
  end
  if rec.aggregated ~= nil then
    return "tree"
  elseif rec.lscpu ~= nil and rec.kernel ~= nil then
    return "env"
  elseif rec.t0_ms ~= nil and rec.cmd ~= nil then
    return "metadata"
  elseif rec.ts_ms ~= nil and rec.cpu_usage ~= nil then
    return "sample"
  end
  return nil
end

--- The figures of a tree or sample record and its finite timestamp (ms),
--- or nil when the record has none.
function M.figures(rec, kind)
  local a = kind == "tree" and rec.aggregated or rec
  if type(a) ~= "table" then
    return nil
  end
  local ts = rec.ts_ms or a.ts_ms
  if type(ts) ~= "number" or ts ~= ts or ts == math.huge or ts == -math.huge then
    return nil
  end
  return a, ts
end

local Summary = {}
Summary.__index = Summary

function M.new()
  return setmetatable({ n = 0, max_processes = 0, max_threads = 0, peak_rss = 0, peak_pss = 0, peak_uss = 0,
    peak_vms = 0, weighted = 0,
    span = 0, disk_r = 0, disk_w = 0, sys_r = 0, sys_w = 0, net_rx = 0, net_tx = 0, pf_cached = nil,
    pf_disk = nil, cpu_sum = 0 }, Summary)
end

--- Feed one record (metadata, tree, sample; tagged or the original's
--- untagged ones). Returns its kind, or nil when it is none of them.
function Summary:add(rec)
  local kind = M.kind_of(rec)
  if kind == "metadata" then
    self.t0_ms = tonumber(rec.t0_ms)
    return kind
  elseif kind == "summary" then
    self.exit_code = type(rec.exit_code) == "number" and rec.exit_code or nil
    return kind
  elseif kind ~= "tree" and kind ~= "sample" then
    return kind
  end
  local a, ts = M.figures(rec, kind)
  if not a then
    return nil
  end
  self.n = self.n + 1
  self.t0_ms = self.t0_ms or ts
  local prev = self.last_ts or self.t0_ms
  local dt = math.max(0, (ts - prev) / 1000)
  local cpu = tonumber(a.cpu_usage) or 0
  self.weighted = self.weighted + cpu * dt
  self.cpu_sum = self.cpu_sum + cpu
  self.span = self.span + dt
  self.last_ts = ts
  self.max_processes = math.max(self.max_processes, tonumber(a.process_count) or (kind == "sample" and 1 or 0))
  self.max_threads = math.max(self.max_threads, tonumber(a.thread_count) or 0)
  self.peak_rss = math.max(self.peak_rss, tonumber(a.mem_rss_kb) or 0)
  self.peak_pss = math.max(self.peak_pss, tonumber(a.mem_pss_kb) or 0)
  self.peak_uss = math.max(self.peak_uss, tonumber(a.mem_uss_kb) or 0)
  self.peak_vms = math.max(self.peak_vms, tonumber(a.mem_vms_kb) or 0)
  self.disk_r = math.max(self.disk_r, tonumber(a.disk_read_bytes) or 0)
  self.disk_w = math.max(self.disk_w, tonumber(a.disk_write_bytes) or 0)
  self.sys_r = math.max(self.sys_r, tonumber(a.syscall_read_bytes) or 0)
  self.sys_w = math.max(self.sys_w, tonumber(a.syscall_write_bytes) or 0)
  -- (the original's flat samples count the network as net_rx_bytes and
  -- net_tx_bytes; its trees, and denet, as sys_net_*)
  local flat = kind == "sample"
  self.net_rx = math.max(self.net_rx, tonumber(a.sys_net_rx_bytes) or flat and tonumber(a.net_rx_bytes) or 0)
  self.net_tx = math.max(self.net_tx, tonumber(a.sys_net_tx_bytes) or flat and tonumber(a.net_tx_bytes) or 0)
  if tonumber(a.page_faults_cached) then
    self.pf_cached = math.max(self.pf_cached or 0, tonumber(a.page_faults_cached))
  end
  if tonumber(a.page_faults_disk) then
    self.pf_disk = math.max(self.pf_disk or 0, tonumber(a.page_faults_disk))
  end
  if tonumber(a.cpu_time_secs) then
    self.cpu_time = math.max(self.cpu_time or 0, tonumber(a.cpu_time_secs))
  end
  self.rss_start = self.rss_start or tonumber(a.mem_rss_kb)
  if tonumber(a.ctx_switches_voluntary) then
    self.vcsw = math.max(self.vcsw or 0, tonumber(a.ctx_switches_voluntary))
  end
  self:_add_sources(a)
  return kind
end

-- sum the numeric fields of t into acc[key]
local function sum_into(acc, key, t)
  if type(t) ~= "table" then
    return
  end
  local s = acc[key] or {}
  for k, v in pairs(t) do
    if type(v) == "number" then
      s[k] = (s[k] or 0) + v
    end
  end
  acc[key] = s
end

-- The sources' fields of a sample (denet.monitor.sources): counters and
-- energy are per interval (summed), pressure counted per sample.
function Summary:_add_sources(a)
  sum_into(self, "perf_sw", a.perf_sw)
  sum_into(self, "perf_hw", a.perf)
  sum_into(self, "energy", a.rapl)
  local psi = a.psi_mem
  if type(psi) == "table" and tonumber(psi.some_avg10) then
    self.psi_n = (self.psi_n or 0) + 1
    self.psi_some = (self.psi_some or 0) + (tonumber(psi.some_avg10) > 0 and 1 or 0)
  end
  if type(a.gpu) == "table" and type(a.gpu.system_metrics) == "table" then
    self.gpu = self.gpu or require("denet.monitor.gpu").summary()
    self.gpu:add(a.gpu)
  end
end

-- The run's counters: final (exact, read at the end) or the samples' sums.
local function perf_counters(self, final)
  local sw = final and final.sw or self.perf_sw
  local hw = final and final.hw or self.perf_hw
  if not sw and not hw then
    return nil
  end
  local r = {}
  for k, v in pairs(sw or {}) do
    r[k] = v
  end
  for k, v in pairs(hw or {}) do
    r[k] = v
  end
  if r.task_clock_ns then
    r.task_clock_secs = round(r.task_clock_ns / 1e9, 6)
  end
  if hw and (hw.cycles or 0) > 0 then
    r.ipc = round((hw.instructions or 0) / hw.cycles, 3)
  end
  if hw and (hw.cache_refs or 0) > 0 then
    r.cache_miss_rate = round((hw.cache_misses or 0) / hw.cache_refs, 4)
  end
  return r, hw
end

-- The summary's memory_characterization (denet.monitor.verdict), from
-- the counters where there are any, else from the samples' page faults.
function Summary:_characterize(pc, hw, cpu_time, wall, vcsw)
  local minor = pc and pc.page_faults_minor or self.pf_cached
  local major = pc and pc.page_faults_major or self.pf_disk
  if not (pc or minor) then
    return nil
  end
  return require("denet.monitor.verdict").characterize{ hw = hw,
    cpu_secs = pc and pc.task_clock_ns and pc.task_clock_ns / 1e9 or cpu_time, wall_secs = wall,
    minor_faults = minor, major_faults = major, rss_start_kb = self.rss_start, rss_peak_kb = self.peak_rss,
    voluntary_switches = vcsw,
    psi_some_fraction = self.psi_n and self.psi_some / self.psi_n or nil }
end

--- The summary record. exit_code: the command's (run); final: the tree's
--- totals when the run ended (Monitor:finish()), which count what happened
--- after the last sample (the root's exact rusage, children reaped since).
function Summary:result(exit_code, final)
  local total = self.last_ts and self.t0_ms and (self.last_ts - self.t0_ms) / 1000 or 0
  local ec = exit_code
  if ec == nil then
    ec = self.exit_code
  end
  local f = final or {}
  local function top(a, b)
    return math.max(a or 0, b or 0)
  end
  local cpu_time = self.cpu_time or self.weighted / 100
  if f.cpu_time_secs then
    cpu_time = math.max(cpu_time, f.cpu_time_secs)
  end
  local wall = f.end_ms and self.t0_ms and math.max(total, (f.end_ms - self.t0_ms) / 1000) or total
  local pc, hw = perf_counters(self, f.counters)
  local energy = self.energy
  if energy then
    for k, v in pairs(energy) do
      energy[k] = round(v, 6)
    end
  end
  return {
    kind = "summary",
    total_time_secs = round(wall, 3),
    sample_count = self.n,
    max_processes = self.max_processes,
    max_threads = self.max_threads,
    peak_mem_rss_kb = self.peak_rss,
    peak_mem_pss_kb = self.peak_pss,
    peak_mem_uss_kb = self.peak_uss,
    peak_mem_vms_kb = self.peak_vms,
    -- the mean of the samples' cpu_usage (the original's figure), and
    -- weighted by the time each sample covers (truer when samples come at
    -- uneven intervals, as the adaptive schedule's do)
    avg_cpu_usage = round(self.n > 0 and self.cpu_sum / self.n or 0, 2),
    avg_cpu_usage_time_weighted = round(self.span > 0 and self.weighted / self.span or
      (self.n > 0 and self.cpu_sum / self.n or 0), 2),
    cpu_time_secs = round(cpu_time, 3),
    total_disk_read_bytes = top(self.disk_r, f.disk_read_bytes),
    total_disk_write_bytes = top(self.disk_w, f.disk_write_bytes),
    total_syscall_read_bytes = top(self.sys_r, f.syscall_read_bytes),
    total_syscall_write_bytes = top(self.sys_w, f.syscall_write_bytes),
    total_sys_net_rx_bytes = top(self.net_rx, f.sys_net_rx_bytes),
    total_sys_net_tx_bytes = top(self.net_tx, f.sys_net_tx_bytes),
    peak_page_faults_cached = (self.pf_cached or f.page_faults_cached) and top(self.pf_cached, f.page_faults_cached)
      or nil,
    peak_page_faults_disk = (self.pf_disk or f.page_faults_disk) and top(self.pf_disk, f.page_faults_disk) or nil,
    processes_started = f.processes_started,
    -- what the run could not see: process events the kernel dropped, and
    -- samples skipped because the loop was held up (a slow hook, a busy
    -- machine)
    lost_events = f.lost_events,
    samples_late = f.samples_late,
    -- off-CPU and syscall figures of the whole run (--offcpu, --syscalls)
    ebpf = f.ebpf,
    -- the perf counters of the whole run, energy (J), GPUs, and the verdict
    perf_counters = pc,
    energy = energy,
    gpu = self.gpu and self.gpu:result() or nil,
    memory_characterization = self:_characterize(pc, hw, cpu_time, wall,
      (self.vcsw or f.ctx_switches_voluntary) and top(self.vcsw, f.ctx_switches_voluntary) or nil),
    exit_code = ec == nil and json.null or ec,
  }
end

--- The text of a recorded file; raises a user error when it cannot be
--- read.
function M.read(path)
  local errors = require("denet.errors")
  local f, err, errno = io.open(path, "r")
  if not f then
    errors.raise(string.format("cannot read %s: %s", path, (err or "?"):gsub("^[^:]*: ", "")), 2, errno)
  end
  local text = f:read("*a")
  f:close()
  return text
end

--- The records of a recorded file's text (JSONL, tagged or the original's
--- untagged lines, or the original's JSON list), and how many lines were
--- not records.
function M.records(text)
  if text:match("^%s*%[") then
    local list = json.try_decode(text)
    if type(list) ~= "table" then
      return {}, 1
    end
    return list, 0
  end
  local records, bad = {}, 0
  for line in text:gmatch("[^\n]+") do
    if line:find("%S") then
      local rec = json.try_decode(line)
      if type(rec) == "table" then
        records[#records + 1] = rec
      else
        bad = bad + 1
      end
    end
  end
  return records, bad
end

--- Read a recorded file: returns the summary accumulator, the number of
--- samples, the count of lines that were not records, and the records.
--- Raises a user error when the file cannot be read.
function M.from_file(path)
  return M.from_text(M.read(path))
end

--- The summary of the records in text (see records()): summary, samples,
--- lines that are not records, the records.
function M.from_text(text)
  local s = M.new()
  local records, bad = M.records(text)
  for _, rec in ipairs(records) do
    if not s:add(rec) then
      bad = bad + 1
    end
  end
  return s, s.n, bad, records
end

return M
