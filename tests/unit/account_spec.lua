-- The monitor's arithmetic on made-up readings: no root, no processes
-- (lib/denet/monitor/account.lua).
local account = require("denet.monitor.account")

local IO = 2
local function reading(t)
  local r = { utime = 0, stime = 0, cutime = 0, cstime = 0, minflt = 0, majflt = 0, cminflt = 0, cmajflt = 0,
    rchar = 0, wchar = 0, read_bytes = 0, write_bytes = 0, cancelled_write_bytes = 0, flags = IO }
  for k, v in pairs(t) do
    r[k] = v
  end
  return r
end

local function state()
  return { base = account.zero() }
end

describe("denet.monitor.account", function()
  it("counts a process's own and its reaped children's CPU, and cancelled writes out", function()
    local c = account.counters(reading({ utime = 150, stime = 50, cutime = 100, cstime = 0, write_bytes = 9000,
      cancelled_write_bytes = 1000, minflt = 3, cminflt = 4 }), 100, IO)
    assert.equals(3, c.cpu) -- 300 ticks of 100 Hz
    assert.equals(2, c.own_cpu)
    assert.equals(8000, c.write_bytes)
    assert.equals(7, c.minflt)
    assert.equals(3, c.own_minflt)
    -- /proc/PID/io unread: no I/O, not garbage
    local none = account.counters(reading({ write_bytes = 9000, flags = 0 }), 100, IO)
    assert.equals(0, none.write_bytes)
  end)

  it("a process that started after monitoring began: its first interval is from its own start", function()
    local st = state()
    -- started at boot time 10.0 s (1000 ticks), monitoring since 9.5 s, sampled at 10.5 s
    local c = account.counters(reading({ utime = 40, stime = 10 }), 100, IO)
    local m = account.process(st, c, { starttime = 1000, rss_pages = 10, vsize = 4096 * 1024, threads = 1,
      processor = 1 }, 10.5, { tck = 100, page_kb = 4, t0_boot = 9.5, prev_t = 10.2 })
    -- 0.5 s of CPU in the 0.5 s it existed: 100%, never a 0% first sample
    assert.equals(100, m.cpu_usage)
    assert.equals(40, m.mem_rss_kb)
    assert.equals(4096, m.mem_vms_kb)
    assert.equals(0, m.uptime_secs)
    -- next sample: from this one
    local c2 = account.counters(reading({ utime = 60, stime = 10 }), 100, IO)
    local m2 = account.process(st, c2, { starttime = 1000, rss_pages = 10, vsize = 4096 * 1024, threads = 1,
      processor = 0 }, 11.5, { tck = 100, page_kb = 4, t0_boot = 9.5, prev_t = 10.5 })
    assert.equals(20, m2.cpu_usage)
    assert.equals(1, m2.uptime_secs) -- whole seconds, an integer
  end)

  it("an attached process counts from the baseline, or from its start with since_start", function()
    local c0 = account.counters(reading({ utime = 500, read_bytes = 1e6, minflt = 50 }), 100, IO)
    local st = state()
    account.baseline(st, c0, false, false, { 7, 2 })
    local c1 = account.counters(reading({ utime = 520, read_bytes = 1.5e6, minflt = 60 }), 100, IO)
    local add = account.contribution(st, c1, { 9, 2 })
    assert.near(0.2, add.cpu, 1e-9)
    assert.equals(5e5, add.read_bytes)
    assert.equals(10, add.minflt)
    assert.equals(2, add.nvcsw)
    assert.equals(0, add.nivcsw)
    local st2 = state()
    account.baseline(st2, c0, false, true, nil)
    -- since its start: all it read
    assert.equals(1.5e6, account.contribution(st2, c1).read_bytes)
    -- a command denet started counts everything from zero
    local ours = state()
    account.baseline(ours, c0, true, false, nil)
    assert.near(5.2, account.contribution(ours, c1).cpu, 1e-9)
  end)

  it("a departed process: kept by a tracked parent's reaping, or counted here; denet's own rusage is exact", function()
    local d = account.zero()
    local st = state()
    st.last = { cpu = 1.5, minflt = 10, majflt = 1, rchar = 100, wchar = 200, read_bytes = 300, write_bytes = 400 }
    st.ctx = { 5, 6 }
    account.depart(d, st, nil, true)
    -- its CPU went up with its parent's cutime: not added twice
    assert.equals(0, d.cpu)
    -- context switches are never passed to a parent
    assert.equals(5, d.nvcsw)
    account.depart(d, st, nil, false)
    assert.equals(1.5, d.cpu)
    assert.equals(400, d.write_bytes)
    -- reaped by denet (an orphan, or the root): wait4's rusage, exactly
    local d2 = account.zero()
    account.depart(d2, st, { utime = 1.25, stime = 0.5, minflt = 12, majflt = 2 }, false)
    assert.near(1.75, d2.cpu, 1e-9)
    assert.equals(12, d2.minflt)
  end)

  it("tree CPU% over an interval from cumulative totals that never go back", function()
    local usage, last = account.tree_cpu(3.0, 2.0, 0.5)
    assert.equals(200, usage)
    assert.equals(3.0, last)
    -- a total read a tick short does not make negative CPU, nor lower the mark
    usage, last = account.tree_cpu(2.99, 3.0, 0.1)
    assert.equals(0, usage)
    assert.equals(3.0, last)
  end)
end)
