-- denet.monitor.gpu: NVIDIA GPUs through NVML (--gpu), opened at run time
-- (libnvidia-ml.so.1, the driver's library: no build dependency).
--
-- Per device: utilization, memory used and total, temperature, power. Per
-- process of the tree: the GPU memory it holds (compute and graphics
-- contexts) and, where NVML gives it, its share of the GPU's time since the
-- last sample. Records take the original denet's shape (its `gpu`
-- object: system_metrics, process_data, has_process_data,
-- collection_method).
--
--   local g, why = gpu.open()        -- $DENET_NVML_LIB names another library
--   g:sample(in_tree) -> the record's gpu object
--   gpu.summarize(list of gpu objects) -> the summary's gpu
local ffi = require("ffi")

local M = {}

ffi.cdef([[
typedef struct dn_nvml_device *dn_nvml_device_t;
typedef struct { unsigned int gpu; unsigned int memory; } dn_nvml_util_t;
typedef struct { unsigned long long total; unsigned long long free; unsigned long long used; } dn_nvml_memory_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId;
  unsigned int computeInstanceId; } dn_nvml_process_t;
typedef struct { unsigned int pid; unsigned long long timeStamp; unsigned int smUtil; unsigned int memUtil;
  unsigned int encUtil; unsigned int decUtil; } dn_nvml_putil_t;
int nvmlInit_v2(void);
int nvmlShutdown(void);
const char *nvmlErrorString(int result);
int nvmlDeviceGetCount_v2(unsigned int *count);
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, dn_nvml_device_t *device);
int nvmlDeviceGetName(dn_nvml_device_t device, char *name, unsigned int length);
int nvmlDeviceGetUtilizationRates(dn_nvml_device_t device, dn_nvml_util_t *utilization);
int nvmlDeviceGetMemoryInfo(dn_nvml_device_t device, dn_nvml_memory_t *memory);
int nvmlDeviceGetTemperature(dn_nvml_device_t device, int sensor, unsigned int *temp);
int nvmlDeviceGetPowerUsage(dn_nvml_device_t device, unsigned int *milliwatts);
int nvmlDeviceGetComputeRunningProcesses_v3(dn_nvml_device_t device, unsigned int *count, dn_nvml_process_t *infos);
int nvmlDeviceGetGraphicsRunningProcesses_v3(dn_nvml_device_t device, unsigned int *count, dn_nvml_process_t *infos);
int nvmlDeviceGetComputeRunningProcesses_v2(dn_nvml_device_t device, unsigned int *count, dn_nvml_process_t *infos);
int nvmlDeviceGetGraphicsRunningProcesses_v2(dn_nvml_device_t device, unsigned int *count, dn_nvml_process_t *infos);
int nvmlDeviceGetProcessUtilization(dn_nvml_device_t device, dn_nvml_putil_t *utilization, unsigned int *count,
  unsigned long long lastSeenTimeStamp);
]])

local SUCCESS, INSUFFICIENT_SIZE = 0, 7
local NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFFULL -- NVML_VALUE_NOT_AVAILABLE
local TEMPERATURE_GPU = 0

-- a symbol of lib, or nil when the library has no such entry point
local function sym(lib, name)
  local ok, f = pcall(function()
    return lib[name]
  end)
  return ok and f or nil
end

local Gpu = {}
Gpu.__index = Gpu

--- Open NVML (opts.lib, $DENET_NVML_LIB or libnvidia-ml.so.1) and its
--- devices. Returns the source, or nil and why (no library, no driver,
--- no device).
function M.open(opts)
  opts = opts or {}
  local path = opts.lib or os.getenv("DENET_NVML_LIB") or "libnvidia-ml.so.1"
  local ok, lib = pcall(ffi.load, path)
  if not ok then
    return nil, string.format("no NVIDIA GPU monitoring: %s cannot be loaded (no NVIDIA driver here)", path)
  end
  local self = setmetatable({ lib = lib, devices = {}, last_ts = {} }, Gpu)
  local function err(rc)
    local s = sym(lib, "nvmlErrorString")
    return s and ffi.string(s(rc)) or ("error " .. rc)
  end
  local rc = lib.nvmlInit_v2()
  if rc ~= SUCCESS then
    return nil, "no NVIDIA GPU monitoring: NVML did not start: " .. err(rc)
  end
  local n = ffi.new("unsigned int[1]")
  rc = lib.nvmlDeviceGetCount_v2(n)
  if rc ~= SUCCESS or n[0] == 0 then
    lib.nvmlShutdown()
    return nil, "no NVIDIA GPU monitoring: " .. (rc ~= SUCCESS and err(rc) or "NVML finds no device")
  end
  for i = 0, n[0] - 1 do
    local h = ffi.new("dn_nvml_device_t[1]")
    if lib.nvmlDeviceGetHandleByIndex_v2(i, h) == SUCCESS then
      local name = ffi.new("char[96]")
      local nm = lib.nvmlDeviceGetName(h[0], name, 96) == SUCCESS and ffi.string(name) or ("GPU " .. i)
      self.devices[#self.devices + 1] = { index = i, handle = h[0], name = nm }
    end
  end
  self.compute = sym(lib, "nvmlDeviceGetComputeRunningProcesses_v3") or
    sym(lib, "nvmlDeviceGetComputeRunningProcesses_v2")
  self.graphics = sym(lib, "nvmlDeviceGetGraphicsRunningProcesses_v3") or
    sym(lib, "nvmlDeviceGetGraphicsRunningProcesses_v2")
  self.putil = sym(lib, "nvmlDeviceGetProcessUtilization")
  return self
end

function Gpu:device_count()
  return #self.devices
end

-- NVML's list call f on device h: its process entries (pid, memory).
local function processes(f, h)
  if not f then
    return {}
  end
  local n = ffi.new("unsigned int[1]", 0)
  local rc = f(h, n, nil)
  if rc ~= INSUFFICIENT_SIZE and rc ~= SUCCESS then
    return {}
  end
  if n[0] == 0 then
    return {}
  end
  local cap = n[0] + 8 -- (processes may start between the calls)
  local buf = ffi.new("dn_nvml_process_t[?]", cap)
  n[0] = cap
  if f(h, n, buf) ~= SUCCESS then
    return {}
  end
  local out = {}
  for i = 0, n[0] - 1 do
    local mem = buf[i].usedGpuMemory
    out[#out + 1] = { pid = buf[i].pid, memory = mem ~= NOT_AVAILABLE and tonumber(mem) or nil }
  end
  return out
end

-- The processes' share of device d's time since the last sample:
-- pid -> { sm, mem } (percent), or nil when NVML does not give it.
function Gpu:_utilization(d)
  if not self.putil then
    return nil
  end
  local n = ffi.new("unsigned int[1]", 0)
  local since = self.last_ts[d.index] or 0ULL
  local rc = self.putil(d.handle, nil, n, since)
  if rc ~= INSUFFICIENT_SIZE and rc ~= SUCCESS or n[0] == 0 then
    return nil
  end
  local cap = n[0] + 8
  local buf = ffi.new("dn_nvml_putil_t[?]", cap)
  n[0] = cap
  if self.putil(d.handle, buf, n, since) ~= SUCCESS then
    return nil
  end
  local by = {}
  for i = 0, n[0] - 1 do
    local s = buf[i]
    local e = by[s.pid] or { sm = 0, mem = 0 }
    e.sm, e.mem = math.max(e.sm, s.smUtil), math.max(e.mem, s.memUtil)
    by[s.pid] = e
    if s.timeStamp > since then
      self.last_ts[d.index] = s.timeStamp
    end
  end
  return by
end

-- device d's figures now
function Gpu:_device(d)
  local lib, h = self.lib, d.handle
  local u, m = ffi.new("dn_nvml_util_t"), ffi.new("dn_nvml_memory_t")
  local t, p = ffi.new("unsigned int[1]"), ffi.new("unsigned int[1]")
  local has_u = lib.nvmlDeviceGetUtilizationRates(h, u) == SUCCESS
  local has_m = lib.nvmlDeviceGetMemoryInfo(h, m) == SUCCESS
  local has_p = lib.nvmlDeviceGetPowerUsage(h, p) == SUCCESS
  return {
    device_index = d.index,
    name = d.name,
    system_utilization_gpu = has_u and u.gpu or nil,
    system_utilization_memory = has_u and u.memory or nil,
    memory_total = has_m and tonumber(m.total) or nil,
    memory_used = has_m and tonumber(m.used) or nil,
    memory_free = has_m and tonumber(m.free) or nil,
    temperature = lib.nvmlDeviceGetTemperature(h, TEMPERATURE_GPU, t) == SUCCESS and t[0] or nil,
    -- NVML's milliwatts (the original's power_usage), and in watts
    power_usage = has_p and p[0] or nil,
    power_watts = has_p and p[0] / 1000 or nil,
  }
end

--- The gpu object of a sample: every device, and the processes of the
--- tree (in_tree(pid) -> bool) that use one.
function Gpu:sample(in_tree)
  local json = require("denet.json")
  local system, procs = json.array(), json.array()
  for _, d in ipairs(self.devices) do
    system[#system + 1] = self:_device(d)
    local util = self:_utilization(d)
    local seen = {}
    for _, list in ipairs({ processes(self.compute, d.handle), processes(self.graphics, d.handle) }) do
      for _, pr in ipairs(list) do
        if in_tree(pr.pid) and not seen[pr.pid] then
          seen[pr.pid] = true
          local u = util and util[pr.pid]
          local e = { pid = pr.pid, device_index = d.index, memory_usage = pr.memory,
            gpu_utilization = u and u.sm or nil, memory_utilization_pct = u and u.mem or nil }
          procs[#procs + 1] = e
        end
      end
    end
  end
  return { system_metrics = system, process_data = procs, has_process_data = #procs > 0,
    collection_method = self.putil and "nvml" or "nvml-memory-only" }
end

function Gpu:close()
  if self.lib then
    self.lib.nvmlShutdown()
    self.lib = nil
  end
end

local Summary = {}
Summary.__index = Summary

--- An accumulator of the summary's gpu (the original's GpuSummary):
--- s:add(gpu object of a sample) ..., s:result().
function M.summary()
  return setmetatable({ n = 0, device_count = 0, total = 0, used = 0, max_util = 0, pmem = 0 }, Summary)
end

function Summary:add(g)
  local total, used = 0, 0
  self.n = self.n + 1
  self.device_count = math.max(self.device_count, #(g.system_metrics or {}))
  for _, d in ipairs(g.system_metrics or {}) do
    total, used = total + (tonumber(d.memory_total) or 0), used + (tonumber(d.memory_used) or 0)
    self.max_util = math.max(self.max_util, tonumber(d.system_utilization_gpu) or 0)
    if tonumber(d.power_watts) then
      self.peak_power = math.max(self.peak_power or 0, d.power_watts)
    end
  end
  self.total, self.used = math.max(self.total, total), math.max(self.used, used)
  local pmem = 0
  for _, p in ipairs(g.process_data or {}) do
    pmem = pmem + (tonumber(p.memory_usage) or 0)
    if tonumber(p.gpu_utilization) then
      self.max_proc = math.max(self.max_proc or 0, p.gpu_utilization)
    end
  end
  self.pmem = math.max(self.pmem, pmem)
end

function Summary:result()
  local GB = 1024 ^ 3
  local round = require("denet.util").round
  return { enabled = true, device_count = self.device_count, total_memory_gb = round(self.total / GB, 6),
    peak_used_memory_gb = round(self.used / GB, 6), max_system_gpu_utilization = self.max_util,
    max_process_gpu_utilization = self.max_proc, process_memory_usage_gb = round(self.pmem / GB, 6),
    peak_power_watts = self.peak_power, samples = self.n }
end

--- The summary's gpu from a list of the samples' gpu objects, or nil.
function M.summarize(list)
  if #list == 0 then
    return nil
  end
  local s = M.summary()
  for _, g in ipairs(list) do
    s:add(g)
  end
  return s:result()
end

return M
