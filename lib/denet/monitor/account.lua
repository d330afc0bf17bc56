-- denet.monitor.account: the monitor's arithmetic, as functions of
-- (previous state, new readings) with no I/O, so every rule is tested
-- without root or processes (tests/unit/account_spec.lua).
--
-- A reading is what host/dn_procfs.c gives for one process (or a table with
-- the same fields): utime, stime, cutime, cstime (ticks), minflt, majflt,
-- cminflt, cmajflt, rchar, wchar, read_bytes, write_bytes,
-- cancelled_write_bytes, flags (IO set when /proc/PID/io was read).
--
-- The tree's totals are exact across processes that come and go between
-- samples: the kernel adds a reaped child's CPU time, faults and I/O to its
-- parent (cutime/cstime, cminflt/cmajflt, /proc/PID/io), so the total of
-- the tree is the sum over live processes of their own + reaped-children
-- counters, plus what left the tree without a tracked parent to reap it.
local bit = require("bit")

local M = {}

--- The counters summed over the tree, in this order.
M.COUNTERS = { "cpu", "minflt", "majflt", "rchar", "wchar", "read_bytes", "write_bytes", "nvcsw", "nivcsw" }
local COUNTERS = M.COUNTERS

--- All counters at zero.
function M.zero()
  local t = {}
  for _, k in ipairs(COUNTERS) do
    t[k] = 0
  end
  return t
end

--- Counters of one reading: the process's own plus its reaped children's
--- (the tree totals need both), and its own alone. tck: clock ticks per
--- second; io_flag: the reading's flag that /proc/PID/io was read.
function M.counters(s, tck, io_flag)
  local c = {
    cpu = tonumber(s.utime + s.stime + s.cutime + s.cstime) / tck,
    own_cpu = tonumber(s.utime + s.stime) / tck,
    minflt = tonumber(s.minflt + s.cminflt),
    majflt = tonumber(s.majflt + s.cmajflt),
    own_minflt = tonumber(s.minflt),
    own_majflt = tonumber(s.majflt),
    rchar = 0, wchar = 0, read_bytes = 0, write_bytes = 0,
  }
  if bit.band(s.flags, io_flag) ~= 0 then
    c.rchar = tonumber(s.rchar)
    c.wchar = tonumber(s.wchar)
    c.read_bytes = tonumber(s.read_bytes)
    -- bytes whose write-back was cancelled (truncated before reaching the
    -- disk) never were written
    c.write_bytes = math.max(0, tonumber(s.write_bytes) - tonumber(s.cancelled_write_bytes))
  end
  return c
end

--- The baseline of a process seen when monitoring began (st.base):
--- a command denet started (ours) counts from zero; a process that was
--- already running counts from now (I/O and faults from its start with
--- since_start). ctx: its /proc context switch counts, when those are the
--- source (no BPF).
function M.baseline(st, c, ours, since_start, ctx)
  st.prev_cpu = ours and 0 or c.own_cpu
  if ours then
    return
  end
  st.base.cpu = c.cpu
  if not since_start then
    for _, k in ipairs({ "minflt", "majflt", "rchar", "wchar", "read_bytes", "write_bytes" }) do
      st.base[k] = c[k]
    end
    st.base.own_minflt, st.base.own_majflt = c.own_minflt, c.own_majflt
  end
  if ctx then
    st.base.nvcsw, st.base.nivcsw = ctx[1], ctx[2]
  end
end

--- What a process adds to the tree's totals now: its counters since its
--- baseline (its reaped children's included), and its context switches
--- (ctx = { voluntary, involuntary }, or nil when unknown).
function M.contribution(st, c, ctx)
  local add = {}
  for _, k in ipairs(COUNTERS) do
    if k ~= "nvcsw" and k ~= "nivcsw" then
      add[k] = (c[k] or 0) - (st.base[k] or 0)
    end
  end
  if ctx then
    add.nvcsw = ctx[1] - (st.base.nvcsw or 0)
    add.nivcsw = ctx[2] - (st.base.nivcsw or 0)
  end
  return add
end

--- One live process's metrics at `now` (seconds on the boot clock), in the
--- original denet's fields. snap: starttime (ticks), rss_pages, vsize,
--- threads, processor, fd_count; prev_t: when the tree was last sampled.
--- A process's first interval starts at its own start when it started
--- after t0_boot, else at the previous sample: never a 0% first sample.
--- Updates st.prev_t and st.prev_cpu.
function M.process(st, c, snap, now, opts)
  local started = snap.starttime / opts.tck
  local prev_t, prev_cpu = st.prev_t, st.prev_cpu
  if not prev_t then
    prev_t = started >= opts.t0_boot and started or opts.prev_t
    prev_cpu = 0
  end
  local pdt = math.max(now - prev_t, 1e-6)
  local cpu_usage = math.max(0, (c.own_cpu - prev_cpu) / pdt * 100)
  st.prev_t, st.prev_cpu = now, c.own_cpu
  local base = st.base
  return {
    cpu_usage = M.round(cpu_usage, 2),
    mem_rss_kb = snap.rss_pages * opts.page_kb,
    mem_vms_kb = math.floor(snap.vsize / 1024),
    disk_read_bytes = c.read_bytes - base.read_bytes,
    disk_write_bytes = c.write_bytes - base.write_bytes,
    syscall_read_bytes = c.rchar - base.rchar,
    syscall_write_bytes = c.wchar - base.wchar,
    page_faults_cached = c.own_minflt - (base.own_minflt or 0),
    page_faults_disk = c.own_majflt - (base.own_majflt or 0),
    thread_count = snap.threads,
    -- whole seconds, as the original's readers expect an integer
    uptime_secs = math.max(0, math.floor(now - started)),
    cpu_core = snap.processor,
  }
end

--- A process left the tree: add to `departed` what the kernel will not
--- pass on to a tracked parent. rusage: exact CPU and faults when denet
--- reaped it itself (then no tracked parent ever sees them);
--- kept_by_parent: a tracked parent reaped it (its time went up with the
--- parent's cutime). Context switches are per process, never passed on.
function M.depart(departed, st, rusage, kept_by_parent)
  local d, last, base = departed, st.last, st.base
  if not kept_by_parent and last then
    for _, k in ipairs({ "rchar", "wchar", "read_bytes", "write_bytes" }) do
      d[k] = d[k] + last[k] - base[k]
    end
    if rusage then
      d.cpu = d.cpu + rusage.utime + rusage.stime - base.cpu
      d.minflt = d.minflt + rusage.minflt - base.minflt
      d.majflt = d.majflt + rusage.majflt - base.majflt
    else
      d.cpu = d.cpu + last.cpu - base.cpu
      d.minflt = d.minflt + last.minflt - base.minflt
      d.majflt = d.majflt + last.majflt - base.majflt
    end
  end
  local ctx = st.final_ctx or st.ctx
  if ctx then
    d.nvcsw = d.nvcsw + ctx[1] - base.nvcsw
    d.nivcsw = d.nivcsw + ctx[2] - base.nivcsw
  end
end

--- The tree's aggregated CPU over an interval: the cumulative total (which
--- never goes back: a process's counters can be read a tick short) against
--- the last one. Returns cpu_usage (% of one core), the new last total.
function M.tree_cpu(total, last_total, dt)
  local usage = M.round(math.max(0, total - last_total) / math.max(dt, 1e-6) * 100, 2)
  return usage, math.max(total, last_total)
end

--- x rounded to `digits` decimals (3 when nil).
function M.round(x, digits)
  return require("denet.util").round(x, digits or 3)
end

return M
