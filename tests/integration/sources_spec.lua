-- The monitor's other sources on real processes: perf counters against
-- what the kernel counted for the same tree (its rusage), the memory
-- verdict of two fixtures, pressure from the tree's own cgroup or the
-- system, a made-up powercap tree, and GPUs through a stand-in NVML.
local cjson = require("cjson")

local function run(args, prefix)
  local stats = H.tmpfile(".json")
  local argv = { "run", "--json", "--stats", stats }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  local code, out, err = H.denet(argv, prefix)
  assert.equal(0, code, err)
  local recs = {}
  for line in out:gmatch("[^\n]+") do
    recs[#recs + 1] = cjson.decode(line)
  end
  return recs, cjson.decode(H.slurp(stats)), err
end

local function within(want, got, frac, what)
  assert(math.abs(got - want) <= frac * want,
    string.format("%s: denet %s, the kernel %s (more than %.0f%% apart)", what, got, want, frac * 100))
end

local function samples(recs)
  local out = {}
  for _, r in ipairs(recs) do
    if r.kind == "tree" or r.kind == "sample" then
      out[#out + 1] = r.kind == "tree" and r.aggregated or r
    end
  end
  return out
end

describe("perf counters", function()
  it("count the whole tree as the kernel does (task-clock, faults, switches)", function()
    local out = H.tmpfile(".txt")
    local recs, s = run({ "--", H.fixture("counters"), out, H.fixture("counters.data." .. math.random(1e6)) })
    local cpu_ns, minflt, majflt, nvcsw, nivcsw = H.slurp(out):match("(%d+) (%d+) (%d+) (%d+) (%d+)")
    assert.is_not_nil(cpu_ns, "the fixture's figures")
    local pc = s.perf_counters
    within(tonumber(cpu_ns), pc.task_clock_ns, 0.02, "task-clock")
    within(tonumber(minflt), pc.page_faults_minor, 0.02, "minor faults")
    within(tonumber(majflt), pc.page_faults_major, 0.02, "major faults")
    within(tonumber(nvcsw) + tonumber(nivcsw), pc.context_switches, 0.02, "context switches")
    -- the fixture's own work: 2 x (500 ms, 4096 + 128 faults, 200 sleeps)
    assert.is_true(pc.page_faults_major >= 256 and pc.page_faults_minor >= 8192 and pc.context_switches >= 400)
    assert.is_true(pc.task_clock_secs >= 1)
    -- the samples' intervals add up to no more than the run's totals (what
    -- came after the last sample is in the totals only)
    local sum = { task_clock_ns = 0, page_faults_minor = 0 }
    for _, a in ipairs(samples(recs)) do
      for k in pairs(sum) do
        sum[k] = sum[k] + a.perf_sw[k]
      end
    end
    assert.is_true(sum.page_faults_minor <= pc.page_faults_minor and sum.task_clock_ns <= pc.task_clock_ns)
    assert.is_true(sum.page_faults_minor > 0 and sum.task_clock_ns > 0)
    -- which counters there are, in the metadata
    local caps = recs[1].capabilities
    assert.is_true(caps.perf_sw.available)
    assert.equal("task_clock_ns", caps.perf_sw.events[1])
  end)

  it("count every thread of an attached process, as its /proc CPU time over the same window", function()
    local pidfile = H.tmpfile(".pid")
    assert.equal(0, (H.sh(string.format("{ %s 2 30 & echo $! > %s; }", H.quote(H.fixture("spin_threads")), pidfile))))
    local pid = tonumber(H.slurp(pidfile))
    local ok, e = pcall(function()
      local stats = H.tmpfile(".json")
      local code, _, err = H.denet({ "attach", "-q", "-d", "1.5", "--stats", stats, tostring(pid) })
      assert.equal(0, code, err)
      local s = cjson.decode(H.slurp(stats))
      -- two spinning threads (the main one waits): the counters opened on
      -- each thread; /proc counts in clock ticks (10 ms a thread)
      local task = s.perf_counters.task_clock_secs
      assert(math.abs(task - s.cpu_time_secs) <= 0.03 * s.cpu_time_secs + 0.03,
        string.format("task-clock %.3f s, /proc %.3f s", task, s.cpu_time_secs))
      assert.is_true(task > 0.5)
    end)
    os.execute("kill " .. (pid or 0) .. " 2>/dev/null")
    assert(ok, e)
  end)

  it("refuse the hardware path with one line where there is no PMU", function()
    local recs, s, err = run({ "--hw-counters", "--", "true" })
    local hw = recs[1].capabilities.perf_hw
    if hw.available then
      -- (a machine with a PMU: the hardware figures are there)
      assert.is_number(s.perf_counters.cycles)
      return
    end
    local _, lines = err:gsub("hardware counters", "")
    assert.equal(1, lines, err)
    assert.matches("no hardware performance counters", hw.reason)
    assert.is_nil(s.perf_counters.cycles)
    assert.equal("page faults and resident set", s.memory_characterization.basis)
  end)

  it("give a memory-bound and a CPU-bound verdict to fixtures that are one and the other", function()
    local _, churn = run({ "-q", "--", H.fixture("mem_churn"), "1", "64" })
    assert.equal("memory-bound", churn.memory_characterization.verdict,
      cjson.encode(churn.memory_characterization))
    local _, busy = run({ "-q", "--", H.fixture("busy"), "1" })
    assert.equal("cpu-bound", busy.memory_characterization.verdict, cjson.encode(busy.memory_characterization))
    assert.is_true(#busy.memory_characterization.evidence >= 3)
  end)
end)

describe("pressure", function()
  local function total(path)
    return tonumber(H.slurp(path):match("some[^\n]*total=(%d+)"))
  end

  it("is the system's when the tree shares its cgroup, and says so", function()
    local before = total("/proc/pressure/memory")
    local recs = run({ "--", "sleep", "0.3" })
    local after = total("/proc/pressure/memory")
    local psi = recs[1].capabilities.psi
    assert.equal("system", psi.source)
    assert.is_string(psi.reason)
    local last = samples(recs)
    last = last[#last]
    assert.is_true(last.psi_mem.some_total_us >= before and last.psi_mem.some_total_us <= after)
    assert.is_table(last.psi_cpu)
    assert.is_table(last.psi_io)
  end)

  it("is the tree's cgroup's when the tree has one of its own", function()
    local root = require("denet.monitor.pressure").cgroup2_root(H.slurp("/proc/self/mountinfo"))
    assert.is_string(root, "a cgroup v2 hierarchy")
    local name = "/denet-psi-test-" .. math.random(1e9)
    local dir = root .. name
    local pidfile = H.tmpfile(".pid")
    local code, _, err = H.sh(string.format("mkdir %s && { %s 30 & echo $! > %s; echo $! > %s/cgroup.procs; }",
      dir, H.quote(H.fixture("sleeper")), pidfile, dir))
    local pid = tonumber(H.slurp(pidfile))
    local ok, e = pcall(function()
      assert.equal(0, code, err)
      local before = total(dir .. "/cpu.pressure")
      local c, out, derr = H.denet({ "attach", "--json", "-d", "0.5", tostring(pid) })
      assert.equal(0, c, derr)
      local after = total(dir .. "/cpu.pressure")
      local recs = {}
      for line in out:gmatch("[^\n]+") do
        recs[#recs + 1] = cjson.decode(line)
      end
      local psi = recs[1].capabilities.psi
      assert.equal("cgroup", psi.source)
      assert.equal(name, psi.cgroup)
      assert.is_true(psi.per_process)
      local list = samples(recs)
      local last = list[#list].psi_cpu
      assert.is_true(last.some_total_us >= before and last.some_total_us <= after)
    end)
    os.execute(string.format("kill %d 2>/dev/null; sleep 0.1; rmdir %s 2>/dev/null", pid or 0, dir))
    assert(ok, e)
  end)
end)

describe("energy", function()
  it("is read from a powercap tree, and its absence said once when asked", function()
    local dir = H.tmpdir() .. "/powercap-run"
    os.execute("mkdir -p " .. dir .. "/intel-rapl:0")
    H.write(dir .. "/intel-rapl:0/name", "package-0\n")
    H.write(dir .. "/intel-rapl:0/energy_uj", "1000\n")
    H.write(dir .. "/intel-rapl:0/max_energy_range_uj", "262143328850\n")
    local recs, s = run({ "--", "sleep", "0.2" }, "DENET_POWERCAP_ROOT=" .. H.quote(dir) .. " ")
    local rapl = recs[1].capabilities.rapl
    assert.is_true(rapl.available)
    assert.equal("powercap", rapl.source)
    assert.equal(1, rapl.zones)
    assert.equal(0, samples(recs)[1].rapl.package_joules)
    assert.equal(0, s.energy.package_joules)
    local _, _, err = run({ "--energy", "--", "true" }, "DENET_POWERCAP_ROOT=/nonexistent ")
    local _, n = err:gsub("no RAPL energy counters here", "")
    assert.equal(1, n, err)
  end)
end)

describe("GPUs", function()
  local lib = H.fixture("libnvidia-ml-fake.so")

  it("are read through NVML: devices, the tree's processes, the summary", function()
    local recs, s = run({ "--gpu", "--", "sleep", "0.3" },
      "DENET_NVML_LIB=" .. H.quote(lib) .. " FAKE_NVML_COMM=sleep ")
    local meta = recs[1]
    assert.same({ available = true, device_count = 2 }, meta.capabilities.gpu)
    local g = samples(recs)[1].gpu
    assert.equal(2, #g.system_metrics)
    local d0, d1 = g.system_metrics[1], g.system_metrics[2]
    assert.same({ device_index = 0, name = "Fake GPU 0", system_utilization_gpu = 40, system_utilization_memory = 20,
      memory_total = 8 * 2 ^ 30, memory_used = 2 * 2 ^ 30, memory_free = 6 * 2 ^ 30, temperature = 50,
      power_usage = 75000, power_watts = 75 }, d0)
    assert.equal(16 * 2 ^ 30, d1.memory_total)
    -- only the tree's own processes (other "sleep"s on the machine are not)
    assert.equal(1, #g.process_data)
    assert.same({ pid = meta.pid, device_index = 0, memory_usage = 512 * 2 ^ 20, gpu_utilization = 33,
      memory_utilization_pct = 11 }, g.process_data[1])
    assert.is_true(g.has_process_data)
    assert.equal(2, s.gpu.device_count)
    assert.equal(24, s.gpu.total_memory_gb)
    assert.equal(6, s.gpu.peak_used_memory_gb)
    assert.equal(50, s.gpu.max_system_gpu_utilization)
    assert.equal(33, s.gpu.max_process_gpu_utilization)
    assert.equal(0.5, s.gpu.process_memory_usage_gb)
    assert.equal(80, s.gpu.peak_power_watts)
  end)

  it("without NVML: one line, and the run goes on", function()
    local recs, s, err = run({ "--gpu", "--", "true" }, "DENET_NVML_LIB=/nonexistent/libnvidia-ml.so.1 ")
    local _, n = err:gsub("no NVIDIA GPU monitoring", "")
    assert.equal(1, n, err)
    assert.is_false(recs[1].capabilities.gpu.available)
    assert.equal(0, s.exit_code)
    assert.is_nil(s.gpu)
  end)
end)
