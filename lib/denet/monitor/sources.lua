-- denet.monitor.sources: what the monitor reads besides /proc, once per
-- sample, for the whole tree: perf counters (denet.monitor.counters),
-- pressure stall information (denet.monitor.pressure), RAPL energy
-- (denet.monitor.energy) and NVIDIA GPUs (denet.monitor.gpu, with --gpu).
-- Each is optional: what could not be opened is said in the metadata
-- record's capabilities, and on stderr once when the user asked for it
-- (--hw-counters, --energy, --gpu).
--
-- Fields of a sample's aggregated figures (and of an exclude-children
-- sample), each present when its source is:
--   perf_sw   software counters since the last sample: task_clock_ns,
--             page_faults_minor, page_faults_major, context_switches,
--             cpu_migrations
--   perf      hardware counters since the last sample (the original's):
--             cycles, instructions, cache_refs, cache_misses,
--             branch_misses, stalled_backend
--   psi_cpu, psi_mem, psi_io   { some_avg10, full_avg10, some_total_us,
--             full_total_us }
--   rapl      { package_joules, dram_joules, process_joules } since the last
--   gpu       the original's gpu object (denet.monitor.gpu)
local util = require("denet.util")
local counters = require("denet.monitor.counters")

local M = {}

M.FIELDS = { "perf_sw", "perf", "psi_cpu", "psi_mem", "psi_io", "rapl", "gpu" }

local Sources = {}
Sources.__index = Sources

-- the names of a counter list, as a JSON array
local function json_names(list)
  local names = require("denet.json").array()
  for _, c in ipairs(list) do
    names[#names + 1] = c[1]
  end
  return names
end

--- Open the sources of a tree: t = { root, pids (its processes, parents
--- first), run (a command held before exec), threads_only, in_tree(pid),
--- opts (the monitor's) }.
function M.open(t)
  local opts = t.opts or {}
  local self = setmetatable({ caps = {}, in_tree = t.in_tree }, Sources)
  if opts.counters ~= false then
    local tids = t.run and { t.root } or counters.tasks_of(t.pids)
    local set, why = counters.open(tids, { threads_only = t.threads_only })
    if set then
      self.counters = set
      self.caps.perf_sw = { available = true, events = json_names(counters.SOFTWARE) }
      self.caps.perf_hw = { available = set.hw, reason = set.hw_refused,
        events = set.hw and json_names(counters.HARDWARE) or nil }
      if set.hw_refused and opts.hw_counters then
        util.note_once("hardware counters: " .. set.hw_refused .. "; software counters only")
      end
    else
      self.caps.perf_sw = { available = false, reason = why }
      util.note_once(why)
    end
  end
  local psi, why = require("denet.monitor.pressure").open(t.root, t.in_tree)
  self.psi = psi
  self.caps.psi = psi and psi:capability() or { system = false, per_process = false, reason = why }
  local energy, ewhy = require("denet.monitor.energy").open()
  self.energy = energy
  self.caps.rapl = energy and { available = true, source = energy.source,
    zones = energy.zones and #energy.zones or nil } or { available = false, zones = 0, reason = ewhy }
  if not energy and opts.energy then
    util.note_once(ewhy)
  end
  if opts.gpu then
    local g, gwhy = require("denet.monitor.gpu").open()
    self.gpu = g
    self.caps.gpu = g and { available = true, device_count = g:device_count() } or
      { available = false, device_count = 0, reason = gwhy }
    if not g then
      util.note_once(gwhy .. "; the run goes on without GPU figures")
    end
  end
  return self
end

--- The sources' figures of one sample, into agg. o: cpu_share (the tree's
--- share of the machine's CPU capacity over the interval, for the energy
--- estimate).
function Sources:read(agg, o)
  if self.counters then
    local d = self.counters:delta()
    agg.perf_sw, agg.perf = d.sw, d.hw
  end
  if self.psi then
    for k, v in pairs(self.psi:read()) do
      agg[k] = v
    end
  end
  if self.energy then
    agg.rapl = self.energy:read(o.cpu_share)
    local sum = self.energy_sum or {}
    for k, v in pairs(agg.rapl) do
      sum[k] = (sum[k] or 0) + v
    end
    self.energy_sum = sum
  end
  if self.gpu then
    agg.gpu = self.gpu:sample(self.in_tree)
  end
end

--- The counters since monitoring began: { sw = {...}, hw = {...} }, or nil.
function Sources:totals()
  if not self.counters then
    return nil
  end
  local t, flat = self.counters:totals(), {}
  for _, kind in ipairs({ "sw", "hw" }) do
    for k, v in pairs(t[kind] or {}) do
      flat[k] = v
    end
  end
  -- (kept for /metrics once the counters are closed)
  self.last_figures = flat
  return t
end

--- The run's cumulative figures so far, for /metrics: { perf_counters
--- (every counter by name), energy (joules per domain) }.
function Sources:figures()
  self:totals()
  return { perf_counters = self.last_figures, energy = self.energy_sum }
end

function Sources:capabilities()
  return self.caps
end

function Sources:close()
  for _, k in ipairs({ "counters", "energy", "gpu" }) do
    if self[k] then
      self[k]:close()
      self[k] = nil
    end
  end
end

return M
