-- denet.monitor.env: the facts about the machine a run is recorded with,
-- in the original denet's types (its readers are strict about them): the
-- `env` record, memory pressure (PSI) per sample, and the metadata's
-- capability manifest.
local core = require("denet.core")

local M = {}

local function first_line(path)
  local s = core.read_file(path)
  return s and s:match("[^\n]+")
end

local function trimmed(path)
  local s = core.read_file(path)
  return s and (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

--- "0-3,7" for a list of CPU numbers ("" for none).
function M.range_list(cpus)
  table.sort(cpus)
  local out, i = {}, 1
  while i <= #cpus do
    local j = i
    while j < #cpus and cpus[j + 1] == cpus[j] + 1 do
      j = j + 1
    end
    out[#out + 1] = i == j and tostring(cpus[i]) or (cpus[i] .. "-" .. cpus[j])
    i = j + 1
  end
  return table.concat(out, ",")
end

-- The CPUs in a "0-3,7" list.
local parse_range_list = require("denet.util").cpu_list

-- The CPUs pid may run on (Cpus_allowed_list), or nil.
local function affinity(pid)
  local st = core.read_file("/proc/" .. pid .. "/status")
  local list = st and st:match("Cpus_allowed_list:%s*([^\n]+)")
  return list and parse_range_list(list) or nil
end

-- sockets, cores per socket, threads per core, from sysfs topology
local function topology()
  local sockets, cores, threads = {}, {}, nil
  local nsock = 0
  for _, name in ipairs(core.list_dir("/sys/devices/system/cpu") or {}) do
    local n = name:match("^cpu(%d+)$")
    if n then
      local t = "/sys/devices/system/cpu/" .. name .. "/topology/"
      local pkg, c = tonumber(first_line(t .. "physical_package_id") or ""), tonumber(first_line(t .. "core_id") or "")
      if pkg and c then
        if not sockets[pkg] then
          sockets[pkg] = true
          nsock = nsock + 1
          cores[pkg] = {}
        end
        cores[pkg][c] = true
        threads = threads or #parse_range_list(first_line(t .. "thread_siblings_list"))
      end
    end
  end
  local maxc = 0
  for _, set in pairs(cores) do
    local k = 0
    for _ in pairs(set) do
      k = k + 1
    end
    maxc = math.max(maxc, k)
  end
  return nsock, maxc, math.max(threads or 1, 1)
end

local function numa()
  local ids = {}
  for _, name in ipairs(core.list_dir("/sys/devices/system/node") or {}) do
    local id = name:match("^node(%d+)$")
    if id then
      ids[#ids + 1] = tonumber(id)
    end
  end
  table.sort(ids)
  local json = require("denet.json")
  local distances, sizes = json.array(), json.array()
  for i, id in ipairs(ids) do
    local row = json.array()
    for d in (core.read_file("/sys/devices/system/node/node" .. id .. "/distance") or ""):gmatch("%d+") do
      row[#row + 1] = tonumber(d)
    end
    distances[i] = row
    local mi = core.read_file("/sys/devices/system/node/node" .. id .. "/meminfo") or ""
    local kb = tonumber(mi:match("MemTotal:%s*(%d+)") or "")
    sizes[i] = kb and math.floor(kb / 1024) or 0
  end
  return { nodes = #ids, distances = distances, node_sizes_mb = sizes }
end

--- The `env` record for a run watching pid: host, kernel, CPU topology and
--- model, NUMA nodes, the affinity denet inherited, the frequency and
--- governor of the CPUs pid may run on, THP and SMT, pid's cgroup.
function M.record(pid)
  local json = require("denet.json")
  local uname = core.uname()
  local cpuinfo = core.read_file("/proc/cpuinfo", 1048576) or ""
  local sockets, cores, threads = topology()
  -- per-CPU frequency facts for the CPUs the monitored process may use
  local allowed = affinity(pid or core.ids().pid) or {}
  local cpus = {}
  for _, c in ipairs(allowed) do
    if core.stat("/sys/devices/system/cpu/cpu" .. c .. "/cpufreq") then
      cpus[#cpus + 1] = c
    end
  end
  local function per_cpu(attr, number)
    if #cpus == 0 then
      return nil
    end
    local out = json.array()
    for i, c in ipairs(cpus) do
      local v = first_line("/sys/devices/system/cpu/cpu" .. c .. "/cpufreq/" .. attr)
      if v == nil then
        return nil
      end
      out[i] = number and tonumber(v) or v
    end
    return out
  end
  local smt = first_line("/sys/devices/system/cpu/smt/active")
  return {
    kind = "env",
    ts_ms = math.floor(core.realtime() * 1000),
    host = uname.nodename,
    kernel = uname.release,
    lscpu = {
      sockets = sockets,
      cores_per_socket = cores,
      threads_per_core = threads,
      model = cpuinfo:match("model name%s*:%s*([^\n]+)") or "",
    },
    numa = numa(),
    affinity_inherited = M.range_list(affinity(core.ids().pid) or {}),
    cpufreq_cpus = #cpus > 0 and M.range_list(cpus) or nil,
    cpu_governor = per_cpu("scaling_governor", false),
    cpu_freq_khz = per_cpu("scaling_cur_freq", true),
    cpu_max_freq_khz = per_cpu("cpuinfo_max_freq", true),
    -- the raw sysfs line, as the original wrote it: "always [madvise] never"
    thp_enabled = trimmed("/sys/kernel/mm/transparent_hugepage/enabled"),
    smt_active = smt and tonumber(smt) ~= 0 or nil,
    cgroup = trimmed("/proc/" .. (pid or "self") .. "/cgroup"),
  }
end

--- The pressure figures of a run (denet.monitor.pressure).
M.parse_psi = function(text)
  return require("denet.monitor.pressure").parse(text)
end

return M
