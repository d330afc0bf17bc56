-- The monitor's other sources, on made-up input: the memory verdict's
-- rule, PSI files, the powercap tree's reader (its counters wrap), and
-- their Prometheus families.
local verdict = require("denet.monitor.verdict")
local pressure = require("denet.monitor.pressure")
local energy = require("denet.monitor.energy")
local metrics = require("denet.metrics")

describe("memory_characterization", function()
  it("follows the hardware counters where there are any", function()
    local v = verdict.characterize{ hw = { cycles = 1000, instructions = 500, stalled_backend = 700 }, cpu_secs = 1,
      wall_secs = 1 }
    assert.equal("memory-bound", v.verdict)
    assert.equal("hardware counters", v.basis)
    assert.equal(0.5, v.mean_ipc)
    assert.equal(0.7, v.backend_stall_ratio)
    v = verdict.characterize{ hw = { cycles = 1000, instructions = 2000, stalled_backend = 100 }, cpu_secs = 1 }
    assert.equal("cpu-bound", v.verdict)
    -- no stall counter: IPC and the cache miss rate
    v = verdict.characterize{ hw = { cycles = 1000, instructions = 800, cache_refs = 100, cache_misses = 40 } }
    assert.equal("memory-bound", v.verdict)
    assert.equal(0.4, v.llc_miss_rate)
    v = verdict.characterize{ hw = { cycles = 1000, instructions = 2500, cache_refs = 100, cache_misses = 2 } }
    assert.equal("cpu-bound", v.verdict)
    -- inconclusive counters: PSI decides, else mixed
    v = verdict.characterize{ hw = { cycles = 1000, instructions = 1200, stalled_backend = 300 } }
    assert.equal("mixed", v.verdict)
    v = verdict.characterize{ hw = { cycles = 1000, instructions = 1200, stalled_backend = 300 },
      psi_some_fraction = 0.8 }
    assert.equal("memory-bound", v.verdict)
  end)

  it("uses page faults and the resident set without hardware counters", function()
    -- 300 000 faults in one CPU second: memory-bound
    local v = verdict.characterize{ cpu_secs = 1, wall_secs = 1, minor_faults = 300000, major_faults = 0 }
    assert.equal("memory-bound", v.verdict)
    assert.equal("page faults and resident set", v.basis)
    assert.equal(300000, v.page_faults_per_cpu_sec)
    -- growth alone: 500 MiB in 2 CPU seconds
    v = verdict.characterize{ cpu_secs = 2, wall_secs = 2, minor_faults = 100, rss_start_kb = 1024,
      rss_peak_kb = 1024 + 500 * 1024 }
    assert.equal("memory-bound", v.verdict)
    assert.equal(250, v.rss_growth_mib_per_cpu_sec)
    -- paging from disk: 100 major faults a second
    v = verdict.characterize{ cpu_secs = 0.5, wall_secs = 10, minor_faults = 10, major_faults = 1000 }
    assert.equal("memory-bound", v.verdict)
    -- a busy CPU with few faults
    v = verdict.characterize{ cpu_secs = 2, wall_secs = 2, minor_faults = 100, major_faults = 0 }
    assert.equal("cpu-bound", v.verdict)
    -- few faults but mostly idle: mixed
    v = verdict.characterize{ cpu_secs = 1, wall_secs = 10, minor_faults = 100, major_faults = 0,
      voluntary_switches = 5000 }
    assert.equal("mixed", v.verdict)
    -- a third of a CPU on a loaded machine, never blocking: CPU-bound
    v = verdict.characterize{ cpu_secs = 1, wall_secs = 3, minor_faults = 100, major_faults = 0,
      voluntary_switches = 3 }
    assert.equal("cpu-bound", v.verdict)
    -- too little CPU time to say
    v = verdict.characterize{ cpu_secs = 0.01, wall_secs = 1, minor_faults = 100000 }
    assert.equal("insufficient-data", v.verdict)
    assert.is_true(#v.evidence > 0)
  end)
end)

describe("pressure files", function()
  it("parses some and full, with totals", function()
    local p = pressure.parse("some avg10=1.23 avg60=4.56 avg300=7.89 total=42\n"
      .. "full avg10=0.10 avg60=0.20 avg300=0.30 total=7\n")
    assert.same({ some_avg10 = 1.23, full_avg10 = 0.1, some_total_us = 42, full_total_us = 7 }, p)
    -- cpu.pressure before 5.13 has no full line
    p = pressure.parse("some avg10=0.50 avg60=0.00 avg300=0.00 total=9\n")
    assert.same({ some_avg10 = 0.5, full_avg10 = 0, some_total_us = 9, full_total_us = 0 }, p)
    assert.is_nil(pressure.parse("not a psi file"))
    assert.is_nil(pressure.parse(nil))
  end)

  it("finds the cgroup v2 mount and a process's group, hybrid or not", function()
    local hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n"
      .. "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
      .. "32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
    assert.equal("/sys/fs/cgroup/unified", pressure.cgroup2_root(hybrid))
    assert.equal("/sys/fs/cgroup", pressure.cgroup2_root("28 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"))
    assert.is_nil(pressure.cgroup2_root("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"))
    assert.equal("/system.slice/x.service", pressure.cgroup_of("12:memory:/system.slice/x.service\n"
      .. "10:cpu,cpuacct:/\n0::/system.slice/x.service\n"))
    assert.is_nil(pressure.cgroup_of("10:cpu,cpuacct:/\n"))
  end)
end)

describe("RAPL energy", function()
  local function tree()
    local dir = H.tmpdir() .. "/powercap" .. math.random(1e6)
    local function zone(name, zname, uj, max)
      os.execute("mkdir -p " .. dir .. "/" .. name)
      H.write(dir .. "/" .. name .. "/name", zname .. "\n")
      H.write(dir .. "/" .. name .. "/energy_uj", uj .. "\n")
      H.write(dir .. "/" .. name .. "/max_energy_range_uj", max .. "\n")
    end
    zone("intel-rapl:0", "package-0", 262143000000, 262143328850)
    zone("intel-rapl:0:0", "core", 100, 1000000)
    zone("intel-rapl:0:1", "dram", 5000000, 65532610987)
    zone("intel-rapl-mmio:0", "package-0", 1, 1000)
    return dir
  end

  it("reads the package and DRAM zones, across a wrap of the counter", function()
    local dir = tree()
    local e = assert(energy.open{ root = dir, perf_root = dir .. "/none" })
    assert.equal("powercap", e.source)
    assert.equal(2, #e.zones)
    -- the package counter wraps: 328 850 uJ to the top, then 2 J
    H.write(dir .. "/intel-rapl:0/energy_uj", "2000000\n")
    H.write(dir .. "/intel-rapl:0:1/energy_uj", "5500000\n")
    local r = e:read(0.25)
    assert.near(2.32885, r.package_joules, 1e-9)
    assert.near(0.5, r.dram_joules, 1e-9)
    assert.near(2.32885 * 0.25, r.process_joules, 1e-9)
    -- and again, no change
    r = e:read(0.25)
    assert.equal(0, r.package_joules)
    assert.equal(0, energy.delta(500, 100, 0))
    assert.equal(200, energy.delta(900, 100, 1000))
  end)

  it("says why when there is none", function()
    local e, why = energy.open{ root = H.tmpdir() .. "/no-powercap", perf_root = H.tmpdir() .. "/no-power" }
    assert.is_nil(e)
    assert.matches("no RAPL energy counters here", why)
  end)
end)

describe("Prometheus families of the sources", function()
  it("counters, pressure, energy and GPUs", function()
    local fams = metrics.new()
    metrics.add_sources(fams, {
      perf_counters = { task_clock_ns = 2.5e9, page_faults_minor = 10, page_faults_major = 2, context_switches = 7,
        cpu_migrations = 1 },
      psi_mem = { some_avg10 = 0, full_avg10 = 0, some_total_us = 1500000, full_total_us = 500000 },
      energy = { package_joules = 12.5, dram_joules = 1.5, process_joules = 3 },
      gpu = { system_metrics = { { device_index = 0, name = "G", system_utilization_gpu = 40, memory_used = 2048,
        memory_total = 4096, temperature = 50, power_watts = 75 } },
        process_data = { { pid = 1, device_index = 0, memory_usage = 512 } } },
    }, { target = "t", pid = "1" })
    local text = metrics.text(fams)
    assert.matches('denet_perf_task_clock_seconds_total{target="t",pid="1"} 2.5\n', text, 1, true)
    assert.matches('denet_perf_page_faults_total{target="t",pid="1",kind="major"} 2\n', text, 1, true)
    assert.matches('denet_pressure_stalled_seconds_total{target="t",pid="1",resource="memory",kind="some"} 1.5\n',
      text, 1, true)
    assert.matches('denet_energy_joules_total{target="t",pid="1",domain="dram"} 1.5\n', text, 1, true)
    assert.matches('denet_gpu_utilization_ratio{target="t",pid="1",device="0",name="G"} 0.4\n', text, 1, true)
    assert.matches('denet_gpu_power_watts{target="t",pid="1",device="0",name="G"} 75\n', text, 1, true)
    assert.matches('denet_gpu_process_memory_bytes{target="t",pid="1",device="0"} 512\n', text, 1, true)
  end)
end)
