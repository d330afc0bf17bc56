-- denet.monitor.verdict: is a run memory-bound or CPU-bound, and on what
-- evidence (the summary's memory_characterization, as the original
-- denet's: verdict "memory-bound", "cpu-bound", "mixed" or
-- "insufficient-data").
--
-- A pure function of the run's figures, so it is the same live and from a
-- recorded file:
--
--   verdict.characterize{ hw = { cycles, instructions, cache_refs, cache_misses, stalled_backend },
--     cpu_secs, wall_secs, minor_faults, major_faults, rss_start_kb, rss_peak_kb, voluntary_switches,
--     psi_some_fraction }
--
-- With hardware counters (the strongest evidence), the original's rule:
-- backend stalls over half the cycles with IPC under 1.0 is memory-bound;
-- stalls under a fifth with IPC over 1.5 is CPU-bound. Where the PMU has
-- no stall counter, IPC under 1.0 with over 20% of cache references
-- missing is memory-bound, IPC over 1.5 with under 10% missing CPU-bound.
-- Inconclusive counters: PSI memory pressure in most samples makes it
-- memory-bound, else mixed.
--
-- Without hardware counters (a virtual machine), from the software ones:
-- memory-bound when the tree takes at least 50 000 page faults per CPU
-- second (each costs 1-4 us of kernel time to map and clear a page: a
-- tenth of the CPU time or more goes to bringing memory in), or its
-- resident set grows by at least 200 MiB per CPU second (large pages fault
-- less for the same growth), or it takes at least 50 major faults (reads
-- from disk) per second; CPU-bound when it takes under 1 000 faults per
-- CPU second, no major faults to speak of, and either keeps at least half a
-- CPU busy or hardly ever blocks (under 100 voluntary context switches per
-- CPU second: it waits for nothing but a CPU, as on a loaded machine);
-- else mixed. Under 50 ms of CPU time is insufficient data.
local M = {}

M.MEMORY_STALL, M.MEMORY_IPC, M.CPU_STALL, M.CPU_IPC = 0.5, 1.0, 0.2, 1.5
M.MEMORY_MISS, M.CPU_MISS = 0.2, 0.1
M.PSI_FRACTION = 0.5
M.MEMORY_FAULT_RATE, M.CPU_FAULT_RATE = 50000, 1000
M.MEMORY_GROWTH_MIB, M.MAJOR_RATE = 200, 50
M.MIN_CPU = 0.05
M.CPU_BLOCK_RATE = 100

local function ratio(a, b)
  if a and b and b > 0 then
    return a / b
  end
end

local function round(x, d)
  return x and require("denet.util").round(x, d or 3) or nil
end

-- the verdict from hardware counters (nil: they say nothing)
local function from_hw(hw, r, ev)
  r.mean_ipc = round(ratio(hw.instructions, hw.cycles))
  r.llc_miss_rate = round(ratio(hw.cache_misses, hw.cache_refs))
  r.backend_stall_ratio = round(ratio(hw.stalled_backend, hw.cycles))
  local ipc, miss, stall = r.mean_ipc, r.llc_miss_rate, r.backend_stall_ratio
  if not ipc then
    return nil
  end
  ev[#ev + 1] = string.format("IPC %.2f", ipc)
  if miss then
    ev[#ev + 1] = string.format("%.0f%% of cache references miss", miss * 100)
  end
  if stall then
    ev[#ev + 1] = string.format("the backend stalls %.0f%% of cycles", stall * 100)
    if stall > M.MEMORY_STALL and ipc < M.MEMORY_IPC then
      return "memory-bound"
    elseif stall < M.CPU_STALL and ipc > M.CPU_IPC then
      return "cpu-bound"
    end
  elseif miss then
    if miss > M.MEMORY_MISS and ipc < M.MEMORY_IPC then
      return "memory-bound"
    elseif miss < M.CPU_MISS and ipc > M.CPU_IPC then
      return "cpu-bound"
    end
  end
  return "inconclusive"
end

-- the verdict from page faults and the resident set
local function from_sw(f, r, ev)
  local cpu, wall = f.cpu_secs or 0, math.max(f.wall_secs or 0, 1e-3)
  local faults = (f.minor_faults or 0) + (f.major_faults or 0)
  r.page_faults_per_cpu_sec = round(ratio(faults, cpu), 1)
  r.major_faults_per_sec = round((f.major_faults or 0) / wall, 2)
  local growth = math.max(0, (f.rss_peak_kb or 0) - (f.rss_start_kb or f.rss_peak_kb or 0)) / 1024
  r.rss_growth_mib_per_cpu_sec = round(ratio(growth, cpu), 1)
  r.cpu_utilization = round(cpu / wall, 3)
  r.voluntary_switches_per_cpu_sec = f.voluntary_switches and round(ratio(f.voluntary_switches, cpu), 1) or nil
  if cpu < M.MIN_CPU then
    ev[#ev + 1] = string.format("only %.0f ms of CPU time", cpu * 1000)
    return "insufficient-data"
  end
  ev[#ev + 1] = string.format("%.0f page faults per CPU second", r.page_faults_per_cpu_sec)
  ev[#ev + 1] = string.format("resident set grew %.0f MiB per CPU second", r.rss_growth_mib_per_cpu_sec)
  ev[#ev + 1] = string.format("%.1f major faults per second", r.major_faults_per_sec)
  ev[#ev + 1] = string.format("%.2f CPUs busy on average", r.cpu_utilization)
  if r.page_faults_per_cpu_sec >= M.MEMORY_FAULT_RATE or r.rss_growth_mib_per_cpu_sec >= M.MEMORY_GROWTH_MIB
    or r.major_faults_per_sec >= M.MAJOR_RATE then
    return "memory-bound"
  end
  local blocks = r.voluntary_switches_per_cpu_sec
  if blocks then
    ev[#ev + 1] = string.format("%.0f voluntary context switches per CPU second", blocks)
  end
  if r.page_faults_per_cpu_sec < M.CPU_FAULT_RATE and r.major_faults_per_sec < 1 and (r.cpu_utilization >= 0.5
    or (blocks and blocks < M.CPU_BLOCK_RATE)) then
    return "cpu-bound"
  end
  return "mixed"
end

--- The memory_characterization of a run's figures f (see above): {
--- verdict, basis, evidence = { ... }, and the figures it rests on }.
function M.characterize(f)
  local r, ev = {}, {}
  r.psi_some_fraction = round(f.psi_some_fraction)
  local verdict
  if f.hw and f.hw.cycles and f.hw.cycles > 0 then
    r.basis = "hardware counters"
    verdict = from_hw(f.hw, r, ev)
  end
  if not verdict then
    r.basis = "page faults and resident set"
    verdict = from_sw(f, r, ev)
  end
  if verdict == "inconclusive" then
    verdict = "mixed"
    if r.psi_some_fraction and r.psi_some_fraction > M.PSI_FRACTION then
      verdict = "memory-bound"
      ev[#ev + 1] = string.format("memory pressure in %.0f%% of samples", r.psi_some_fraction * 100)
    end
  end
  r.verdict = verdict
  r.evidence = ev
  return r
end

return M
