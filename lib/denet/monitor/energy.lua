-- denet.monitor.energy: CPU package and DRAM energy (Intel and AMD RAPL)
-- per sample, in joules.
--
-- From the powercap tree (/sys/class/powercap: a zone intel-rapl:N per
-- package, its sub-zone named "dram" for the memory), whose energy_uj
-- counters wrap at max_energy_range_uj; else from the perf events
-- power/energy-pkg and power/energy-ram. Either is the whole machine's
-- energy: what the tree's share of it is, is estimated by its share of
-- the machine's CPU time (process_joules), as the original denet did.
--
--   local e, why = energy.open({ root = "/sys/class/powercap" })
--   e:read(cpu_share) -> { package_joules, dram_joules, process_joules } since the last read
--
-- DENET_POWERCAP_ROOT names another powercap tree (a made-up one in
-- tests); DENET_PERF_POWER_ROOT another perf "power" event source.
local core = require("denet.core")

local M = {}

--- The counter's change from prev to cur, for a counter that wraps to 0
--- past max (0 when it went back and no range is known).
function M.delta(prev, cur, max)
  if cur >= prev then
    return cur - prev
  elseif max and max > 0 then
    return max - prev + cur
  end
  return 0
end

local function num(path)
  return tonumber((core.read_file(path) or ""):match("^%s*(%S+)"))
end

--- The zones of powercap tree root: { { kind = "package"|"dram", path,
--- max_uj } }, packages and their dram sub-zones (core, uncore and the
--- mmio mirror are left out: their energy is inside the package's).
function M.zones(root)
  local zones = {}
  local names = core.list_dir(root) or {}
  table.sort(names)
  for _, name in ipairs(names) do
    local pkg, sub = name:match("^intel%-rapl:(%d+):?(%d*)$")
    if pkg then
      local dir = root .. "/" .. name
      local zname = (core.read_file(dir .. "/name") or ""):gsub("%s+$", "")
      local kind = sub == "" and "package" or (zname == "dram" and "dram") or nil
      if kind and num(dir .. "/energy_uj") then
        zones[#zones + 1] = { kind = kind, path = dir .. "/energy_uj", max_uj = num(dir .. "/max_energy_range_uj"),
          name = zname }
      end
    end
  end
  return zones
end

-- A sample's figures from the joules of each domain (dram: nil when the
-- machine has no DRAM domain) and the tree's share of the CPU capacity.
local function figures(package, dram, cpu_share)
  return { package_joules = package, dram_joules = dram,
    process_joules = package * math.min(1, math.max(0, cpu_share or 0)) }
end

local Powercap = {}
Powercap.__index = Powercap

function Powercap:read(cpu_share)
  local uj = { package = 0, dram = 0 }
  local any_dram = false
  for _, z in ipairs(self.zones) do
    local cur = num(z.path)
    if cur then
      uj[z.kind] = uj[z.kind] + M.delta(z.last, cur, z.max_uj)
      z.last = cur
    end
    any_dram = any_dram or z.kind == "dram"
  end
  return figures(uj.package / 1e6, any_dram and uj.dram / 1e6 or nil, cpu_share)
end

function Powercap:close()
end

-- The perf "power" PMU's events (energy-pkg, energy-ram): { type, cpus,
-- events = { { kind, config, scale } } }, or nil.
function M.perf_power(dir)
  local ptype = num(dir .. "/type")
  if not ptype then
    return nil
  end
  local cpus = {}
  for c in (core.read_file(dir .. "/cpumask") or "0"):gmatch("%d+") do
    cpus[#cpus + 1] = tonumber(c)
  end
  local events = {}
  for _, e in ipairs({ { "package", "energy-pkg" }, { "dram", "energy-ram" } }) do
    local spec = core.read_file(dir .. "/events/" .. e[2])
    local config = spec and tonumber(spec:match("event=(0x%x+)") or spec:match("event=(%d+)") or "")
    if config then
      events[#events + 1] = { kind = e[1], config = config, scale = num(dir .. "/events/" .. e[2] .. ".scale") or 1 }
    end
  end
  return #events > 0 and { type = ptype, cpus = cpus, events = events } or nil
end

local PerfPower = {}
PerfPower.__index = PerfPower

function PerfPower:read(cpu_share)
  local joules = { package = 0, dram = 0 }
  local any_dram = false
  for _, c in ipairs(self.counters) do
    local v = core.perf_read(c.fd)
    if v then
      joules[c.kind] = joules[c.kind] + math.max(0, v - c.last) * c.scale
      c.last = v
    end
    any_dram = any_dram or c.kind == "dram"
  end
  return figures(joules.package, any_dram and joules.dram or nil, cpu_share)
end

function PerfPower:close()
  for _, c in ipairs(self.counters) do
    core.perf_close(c.fd)
  end
  self.counters = {}
end

local function open_perf(dir)
  local pmu = M.perf_power(dir)
  if not pmu then
    return nil
  end
  local self = setmetatable({ counters = {}, source = "perf" }, PerfPower)
  for _, e in ipairs(pmu.events) do
    for _, cpu in ipairs(pmu.cpus) do
      local fd = core.perf_open(-1, pmu.type, e.config, { cpu = cpu })
      if fd then
        self.counters[#self.counters + 1] = { fd = fd, kind = e.kind, scale = e.scale, last = core.perf_read(fd) or 0 }
      end
    end
  end
  if #self.counters == 0 then
    return nil
  end
  return self
end

--- The energy source: the powercap tree (opts.root, $DENET_POWERCAP_ROOT or
--- /sys/class/powercap), else the perf power events. Returns the reader
--- (reader.source: "powercap" or "perf", reader.zones), or nil and why.
function M.open(opts)
  opts = opts or {}
  local root = opts.root or os.getenv("DENET_POWERCAP_ROOT") or "/sys/class/powercap"
  local zones = M.zones(root)
  local has_pkg = false
  for _, z in ipairs(zones) do
    has_pkg = has_pkg or z.kind == "package"
    z.last = num(z.path)
  end
  if has_pkg then
    return setmetatable({ zones = zones, source = "powercap", root = root }, Powercap)
  end
  local perf = open_perf(opts.perf_root or os.getenv("DENET_PERF_POWER_ROOT")
    or "/sys/bus/event_source/devices/power")
  if perf then
    return perf
  end
  return nil, string.format("no RAPL energy counters here (no readable intel-rapl zone in %s, no power/energy-pkg "
    .. "perf event): energy is not measured", root)
end

return M
