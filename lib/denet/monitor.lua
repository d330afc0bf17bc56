-- denet.monitor: CPU, memory, I/O and threads of a process tree, sampled
-- at (adaptive) intervals, as records in the original denet's format.
--
--   local monitor = require("denet.monitor")
--   local m = monitor.new{ proc = denet.spawn(cmd), on_sample = function(rec) ... end }
--   m:start()                 -- tracks the tree, takes the baseline, resumes a held command
--   local why = m:run{ duration = 10 }
--   local summary = m:finish()
--
-- Where the numbers come from:
-- * /proc/PID/{stat,io,fd,smaps_rollup} through held fds (host/dn_procfs.c).
-- * The tree (denet.tree): BPF adds every fork of a tracked process in the
--   kernel and reports exits; context switches are counted per process at
--   sched_switch (bpf-src/ctxsw.c), threads that exited included.
-- * Tree totals are exact across processes that come and go between
--   samples: the kernel adds a reaped child's CPU time, page faults and
--   I/O to its parent (cutime/cstime, cminflt/cmajflt, /proc/PID/io), so
--   the cumulative total of the tree is the sum over live processes of
--   their own + reaped-children counters, plus what left the tree without
--   a tracked parent to reap it (the root; orphans reaped by denet as
--   subreaper, whose exact rusage wait4 returns).
-- * A process's first sample compares with its start (a new process) or
--   with the baseline taken when monitoring began: never a 0% first sample.
local ffi = require("ffi")
local bit = require("bit")
local core = require("denet.core")
local denet = require("denet")
local errors = require("denet.errors")
local procfs = require("denet.procfs")
local tree_mod = require("denet.tree")
local cjson = require("cjson")

local M = {}

local GONE, IO, PSS, CTXSW, SKIPPED = procfs.GONE, procfs.IO, procfs.PSS, procfs.CTXSW, procfs.SKIPPED
local TCK = procfs.CLK_TCK
local PAGE_KB = procfs.PAGE_KB
local ZOMBIE = string.byte("Z")
local band = bit.band

local function round(x, digits)
  local m = 10 ^ (digits or 3)
  return math.floor(x * m + 0.5) / m
end
M.round = round

--- The adaptive interval (seconds) at `elapsed` seconds: base for the
--- first second, then a linear ramp to max by 10 s, then max.
function M.interval_at(elapsed, base, max)
  if max <= base or elapsed < 1 then
    return base
  elseif elapsed >= 10 then
    return max
  end
  return base + (max - base) * (elapsed - 1) / 9
end

-- Bytes received and sent on every interface but loopback of the network
-- namespace pid lives in (namespace-wide, not per process, as the
-- original denet reported them).
local net_bytes = core.net_dev_bytes
M.net_bytes = net_bytes

local Monitor = {}
Monitor.__index = Monitor

local COUNTERS = { "cpu", "minflt", "majflt", "rchar", "wchar", "read_bytes", "write_bytes", "nvcsw", "nivcsw" }

local function zero_counters()
  local t = {}
  for _, k in ipairs(COUNTERS) do
    t[k] = 0
  end
  return t
end

--- Create a monitor. opts:
---   proc = a denet.spawn() process (run), or pid = N (attach);
---   interval, max_interval (seconds; defaults 0.1 and 1);
---   exclude_children; since_process_start (I/O counted from each
---   process's start instead of from when monitoring began);
---   bpf = true/false/nil (nil: use BPF when it can work here);
---   pss_interval (seconds between smaps_rollup reads, default 5: the
---   kernel walks every page table for it);
---   refresh_interval (seconds between reads of processes that did not
---   run, for their resident memory; default 2);
---   on_sample(record), on_event(ev) (fork/exec/exit of the tree);
---   parts (names of denet.compose parts), text (a script's own BPF C),
---   cflags: more BPF to compile with the tree.
function M.new(opts)
  local self = setmetatable({
    opts = opts,
    proc = opts.proc,
    root = opts.proc and opts.proc.pid or opts.pid,
    base = opts.interval or 0.1,
    max = math.max(opts.max_interval or 1, opts.interval or 0.1),
    pss_interval = opts.pss_interval or 5,
    refresh_interval = opts.refresh_interval or 2,
    exclude_children = opts.exclude_children or false,
    since_start = opts.since_process_start or false,
    on_sample = opts.on_sample,
    procs = {},            -- pid -> state
    jp = {}, jc = {}, ju = {}, -- reused by encode()
    gone_parents = {},     -- pid -> sample number when it left
    departed = zero_counters(),
    samples = 0,
    mypid = core.ids().pid,
    started = 0,
    exited = 0,
    last_cpu_total = 0,
  }, Monitor)
  if not self.root then
    error("monitor.new: give proc= or pid=", 2)
  end
  local ppid, _, _, state = core.read_stat(self.root)
  if not ppid or state == ZOMBIE then
    errors.raise(string.format("no such process: %d", self.root))
  end
  -- scheduling counters; off-CPU accounting and syscall counts of the
  -- same tree go in the same program (denet.compose)
  local parts, cflags = { "ctxsw" }, {}
  if opts.syscalls then
    parts[#parts + 1] = "syscalls"
  end
  if opts.offcpu then
    parts[#parts + 1] = "offcpu"
    cflags[#cflags + 1] = "-DDN_KSTACK_REUSE"
  end
  for _, p in ipairs(opts.parts or {}) do
    parts[#parts + 1] = p
  end
  for _, f in ipairs(opts.cflags or {}) do
    cflags[#cflags + 1] = f
  end
  if (opts.offcpu or opts.syscalls) and opts.bpf == false then
    errors.raise(string.format("--%s needs BPF, which is not available here (see denet doctor)",
      opts.offcpu and "offcpu" or "syscalls"))
  end
  self.tree = tree_mod.new{
    bpf = opts.bpf,
    follow = not self.exclude_children,
    parts = parts,
    text = opts.text,
    cflags = cflags,
    name = "monitor",
    on_event = function(ev)
      self:_tree_event(ev)
    end,
  }
  if opts.offcpu and self.tree.program and self.tree.program:has_flag("-DDN_KSTACK_REUSE") then
    require("denet.offcpu").learn_kstacks(self.tree.bpf)
  end
  self.sc_t0 = core.monotonic()
  self.ptab = procfs.new()
  -- did pid not run since its last read? (its switch counts are the same
  -- and no thread of it is on a CPU)
  self.idle = function(pid)
    local st, c = self.procs[pid], self.ctx_now[pid]
    local seen = st and st.seen
    return seen ~= nil and c ~= nil and c[5] == self.ctx_gen and c[4] == 0 and c[1] == seen[1] and c[2] == seen[2]
      and c[3] == seen[3]
  end
  return self
end

-- State of a newly watched process. born: started after monitoring began.
function Monitor:_watch(pid, ppid, born)
  if self.procs[pid] then
    return self.procs[pid]
  end
  local ok, io_ok = self.ptab:add(pid)
  if not ok then
    return nil
  end
  local st = { pid = pid, ppid = ppid, born = born, io_ok = io_ok, base = zero_counters() }
  self.procs[pid] = st
  return st
end

function Monitor:_tree_event(ev)
  if ev.kind == "fork" then
    self.started = self.started + 1
    self:_watch(ev.pid, ev.ppid, true)
  elseif ev.kind == "exec" then
    local st = self.procs[ev.pid]
    if st then
      st.cmd = nil -- read again at the next sample
    end
  elseif ev.kind == "exit" then
    local st = self.procs[ev.pid]
    if st then
      st.final_ctx = { ev.nvcsw, ev.nivcsw }
    end
  end
  if self.opts.on_event then
    self.opts.on_event(ev)
  end
end

local function sample_counters(s, st)
  -- own counters of a process, and its reaped children's, as the tree
  -- totals need them
  local c = {
    cpu = tonumber(s.utime + s.stime + s.cutime + s.cstime) / TCK,
    own_cpu = tonumber(s.utime + s.stime) / TCK,
    minflt = tonumber(s.minflt + s.cminflt),
    majflt = tonumber(s.majflt + s.cmajflt),
    own_minflt = tonumber(s.minflt),
    own_majflt = tonumber(s.majflt),
    rchar = 0, wchar = 0, read_bytes = 0, write_bytes = 0,
  }
  if band(s.flags, IO) ~= 0 then
    c.rchar = tonumber(s.rchar)
    c.wchar = tonumber(s.wchar)
    c.read_bytes = tonumber(s.read_bytes)
    -- bytes whose write-back was cancelled (truncated before reaching the
    -- disk) never were written
    c.write_bytes = math.max(0, tonumber(s.write_bytes) - tonumber(s.cancelled_write_bytes))
  end
  return c
end

--- Begin: track the root (and, when attaching, its existing descendants),
--- take the baseline, and resume the command if it is held.
function Monitor:start(opts)
  local ppid = core.read_stat(self.root)
  self.tree:add(self.root, ppid, { root = true, descendants = self.proc == nil })
  for pid, info in pairs(self.tree.live) do
    local st = self:_watch(pid, info.ppid, false)
    if not st and pid == self.root then
      errors.raise(string.format("cannot read process %d: it exited or may not be read", self.root))
    end
  end
  local root = self.procs[self.root]
  if self.proc == nil and not root.io_ok then
    errors.raise(string.format("cannot read process %d's I/O counters (/proc/%d/io): permission denied; "
      .. "run denet as root or as the process's owner", self.root, self.root))
  end
  -- baseline: a command we started counts from zero; a process that was
  -- already running counts from now (I/O and faults from its start with
  -- since_process_start)
  self.t0_boot = core.boottime()
  self.t0_mono = core.monotonic()
  self.t0_ms = math.floor(core.realtime() * 1000)
  local buf, n = self.ptab:sample(false, self.tree.mode ~= "bpf")
  for i = 0, n - 1 do
    local s = buf[i]
    local st = self.procs[s.pid]
    if st and band(s.flags, GONE) == 0 then
      local c = sample_counters(s, st)
      local ours = self.proc and s.pid == self.root
      st.prev_t = self.t0_boot
      st.prev_cpu = ours and 0 or c.own_cpu
      if not ours then
        st.base.cpu = c.cpu
        if not self.since_start then
          for _, k in ipairs({ "minflt", "majflt", "rchar", "wchar", "read_bytes", "write_bytes" }) do
            st.base[k] = c[k]
          end
          st.base.own_minflt, st.base.own_majflt = c.own_minflt, c.own_majflt
        end
        if band(s.flags, CTXSW) ~= 0 then
          -- without BPF the counts are /proc's, since the process started
          st.base.nvcsw, st.base.nivcsw = tonumber(s.nvcsw), tonumber(s.nivcsw)
        end
      end
    end
  end
  self.net0 = { net_bytes(self.root) }
  self.prev_t = self.t0_boot
  self.last_pss_t = -math.huge
  self.last_full_t = -math.huge
  -- opts.before_resume: what must happen before the command runs (a
  -- plugin's uprobes on it)
  if opts and opts.before_resume then
    opts.before_resume()
  end
  if self.proc and self.proc:held() then
    self.proc:resume()
  end
  return self
end

-- A process left the tree: keep what the kernel will not pass on to a
-- tracked parent. rusage: exact CPU and faults when denet reaped it itself
-- (then no tracked parent will ever see them).
function Monitor:_depart(st, rusage)
  self.exited = self.exited + 1
  local d, last, base = self.departed, st.last, st.base
  -- a tracked parent (still here, or gone in the last samples) reaped it
  -- and passed its time on; one that left earlier cannot have
  local ppid = st.last_ppid or st.ppid
  local gone_at = self.gone_parents[ppid]
  local kept_by_parent = not rusage and (self.procs[ppid] ~= nil or (gone_at and self.samples - gone_at <= 2))
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
  -- context switches are counted per process, never passed to a parent
  local ctx = st.final_ctx or st.ctx
  if ctx then
    d.nvcsw = d.nvcsw + ctx[1] - base.nvcsw
    d.nivcsw = d.nivcsw + ctx[2] - base.nivcsw
  end
  self.ptab:remove(st.pid)
  self.tree:remove(st.pid)
  self.procs[st.pid] = nil
  self.gone_parents[st.pid] = self.samples
end

local function command_of(st)
  if not st.cmd then
    local argv = procfs.cmdline(st.pid)
    st.cmd = argv and table.concat(argv, " ") or (st.comm and ("[" .. st.comm .. "]")) or "?"
    st.argv = argv
  end
  return st.cmd
end

-- Add one live process's metrics to the tree's sums.
local function tally(agg, m, pss_kb)
  agg.mem_rss_kb = agg.mem_rss_kb + m.mem_rss_kb
  agg.mem_vms_kb = agg.mem_vms_kb + m.mem_vms_kb
  agg.mem_pss_kb = agg.mem_pss_kb + (pss_kb or 0)
  agg.thread_count = agg.thread_count + m.thread_count
  agg.fd_count = agg.fd_count + (m.fd_count or 0)
  agg.process_count = agg.process_count + 1
end

--- Take one sample now. Returns the record ("tree", or "sample" with
--- exclude_children) after calling on_sample with it.
function Monitor:sample()
  local now = core.boottime()
  local ts_ms = math.floor(core.realtime() * 1000)
  local dt = now - self.prev_t
  if dt <= 0 then
    dt = 1e-6
  end
  -- forget parents that left samples ago: their children have been seen
  -- since, and their pids may be reused
  for pid, at in pairs(self.gone_parents) do
    if self.samples - at > 2 then
      self.gone_parents[pid] = nil
    end
  end
  self.tree:refresh()
  if self.tree.mode == "proc" then
    for pid, info in pairs(self.tree.live) do
      if not self.procs[pid] then
        self:_watch(pid, info.ppid, true)
      end
    end
  end
  local want_pss = now - self.last_pss_t >= self.pss_interval
  if want_pss then
    self.last_pss_t = now
  end
  local full = want_pss or now - self.last_full_t >= self.refresh_interval
  if full then
    self.last_full_t = now
  end
  -- with BPF, read only processes that ran since their last read (their
  -- switch counts moved, or a thread is on a CPU now): nothing of a
  -- process that did not run can have changed but its resident memory,
  -- which the full read every pss_interval refreshes
  local ctx, gen = self.tree:ctx_switches()
  self.ctx_now, self.ctx_gen = ctx, gen
  local buf, n = self.ptab:sample(want_pss, self.tree.mode ~= "bpf", (ctx and not full) and self.idle or nil)

  local agg = {
    cpu_usage = 0, mem_rss_kb = 0, mem_vms_kb = 0, mem_pss_kb = 0,
    disk_read_bytes = 0, disk_write_bytes = 0, syscall_read_bytes = 0, syscall_write_bytes = 0,
    page_faults_cached = 0, page_faults_disk = 0, thread_count = 0, fd_count = 0,
    ctx_switches_voluntary = 0, ctx_switches_involuntary = 0, process_count = 0,
  }
  local tot = zero_counters()
  local children, parent = {}, nil

  -- first the processes that left: gone ones, and orphans re-parented to
  -- denet that have exited (reaped now, for their exact rusage). Children
  -- before parents: a child whose parent also left in this interval was
  -- reaped by it, and its time went up the tree with the parent's.
  local skipped = {}
  for i = n - 1, 0, -1 do
    local s = buf[i]
    local st = self.procs[s.pid]
    if st and s.pid ~= self.root or (st and not self.proc) then
      if band(s.flags, GONE) ~= 0 then
        skipped[s.pid] = true
        self:_depart(st, nil)
      elseif s.state == ZOMBIE and s.ppid == self.mypid and band(s.flags, SKIPPED) == 0 then
        st.last = sample_counters(s, st)
        local code, ru = core.reap(s.pid)
        if code then
          skipped[s.pid] = true
          self:_depart(st, ru)
        end
      end
    end
  end

  for i = 0, n - 1 do
    local s = buf[i]
    local st = self.procs[s.pid]
    if st and not skipped[s.pid] and band(s.flags, GONE) == 0 then
      local c, snap
      local idle = band(s.flags, SKIPPED) ~= 0 and st.snap ~= nil
      if idle and st.m then
        -- did not run: the same figures, a new time; its tables are reused
        c = st.last
        local add = st.tot_add
        for j = 1, #COUNTERS do
          local k = COUNTERS[j]
          tot[k] = tot[k] + (add[k] or 0)
        end
        local m = st.m
        m.ts_ms = ts_ms
        m.cpu_usage = 0
        m.uptime_secs = round(now - st.snap.starttime / TCK, 2)
        st.prev_t = now
        tally(agg, m, st.pss_kb)
        if s.pid == self.root then
          parent = m
          agg.uptime_secs = m.uptime_secs
        else
          children[#children + 1] = st.child
        end
        goto continue
      end
      if idle then
        c, snap = st.last, st.snap
      else
        c = sample_counters(s, st)
        snap = {
          state = s.state, starttime = tonumber(s.starttime), rss_pages = tonumber(s.rss_pages),
          vsize = tonumber(s.vsize), threads = tonumber(s.threads), processor = tonumber(s.processor),
          fd_count = s.fd_count >= 0 and tonumber(s.fd_count) or nil,
        }
        st.snap, st.last, st.last_ppid = snap, c, s.ppid
        st.comm = ffi.string(s.comm)
        local cx = ctx and ctx[s.pid]
        if cx and cx[5] ~= gen then
          cx = nil -- stale: the kernel stopped tracking it (it exited)
        end
        st.seen = cx and { cx[1], cx[2], cx[3] }
        if cx then
          st.ctx = st.seen
        elseif band(s.flags, CTXSW) ~= 0 then
          st.ctx = { tonumber(s.nvcsw), tonumber(s.nivcsw) }
        end
        if band(s.flags, PSS) ~= 0 then
          st.pss_kb = tonumber(s.pss_kb)
        end
      end
      do
        -- tree totals: own + reaped children, zombies included
        local add = {}
        for _, k in ipairs(COUNTERS) do
          if k ~= "nvcsw" and k ~= "nivcsw" then
            add[k] = (c[k] or 0) - (st.base[k] or 0)
          end
        end
        local ctxv = st.final_ctx or st.ctx
        if ctxv then
          add.nvcsw = ctxv[1] - (st.base.nvcsw or 0)
          add.nivcsw = ctxv[2] - (st.base.nivcsw or 0)
        end
        for j = 1, #COUNTERS do
          local k = COUNTERS[j]
          tot[k] = tot[k] + (add[k] or 0)
        end
        st.tot_add = add
        if snap.state ~= ZOMBIE then
          -- per-process metrics; a new process's first interval starts at
          -- its own start, not at 0% for the time before it existed
          local started = snap.starttime / TCK
          local prev_t, prev_cpu = st.prev_t, st.prev_cpu
          if not prev_t then
            prev_t = started >= self.t0_boot and started or self.prev_t
            prev_cpu = 0
          end
          local pdt = math.max(now - prev_t, 1e-6)
          local cpu_usage = math.max(0, (c.own_cpu - prev_cpu) / pdt * 100)
          st.prev_t, st.prev_cpu = now, c.own_cpu
          local m = {
            ts_ms = ts_ms,
            cpu_usage = round(cpu_usage, 2),
            mem_rss_kb = snap.rss_pages * PAGE_KB,
            mem_vms_kb = math.floor(snap.vsize / 1024),
            mem_pss_kb = st.pss_kb,
            disk_read_bytes = c.read_bytes - st.base.read_bytes,
            disk_write_bytes = c.write_bytes - st.base.write_bytes,
            syscall_read_bytes = c.rchar - st.base.rchar,
            syscall_write_bytes = c.wchar - st.base.wchar,
            page_faults_cached = c.own_minflt - (st.base.own_minflt or 0),
            page_faults_disk = c.own_majflt - (st.base.own_majflt or 0),
            thread_count = snap.threads,
            fd_count = snap.fd_count,
            ctx_switches_voluntary = ctxv and (ctxv[1] - (st.base.nvcsw or 0)) or nil,
            ctx_switches_involuntary = ctxv and (ctxv[2] - (st.base.nivcsw or 0)) or nil,
            uptime_secs = round(now - started, 2),
            cpu_core = snap.processor,
          }
          tally(agg, m, st.pss_kb)
          st.m = m
          if s.pid == self.root then
            parent = m
            agg.uptime_secs = m.uptime_secs
          else
            st.child = { pid = s.pid, command = command_of(st), metrics = m }
            children[#children + 1] = st.child
          end
        else
          st.m = nil -- a zombie is not listed
        end
      end
    end
    ::continue::
  end

  for _, k in ipairs(COUNTERS) do
    tot[k] = tot[k] + self.departed[k]
  end
  local cpu_total = tot.cpu
  agg.cpu_usage = round(math.max(0, cpu_total - self.last_cpu_total) / dt * 100, 2)
  self.last_cpu_total = math.max(cpu_total, self.last_cpu_total)
  agg.cpu_time_secs = round(self.last_cpu_total, 3)
  agg.disk_read_bytes = tot.read_bytes
  agg.disk_write_bytes = tot.write_bytes
  agg.syscall_read_bytes = tot.rchar
  agg.syscall_write_bytes = tot.wchar
  agg.page_faults_cached = tot.minflt
  agg.page_faults_disk = tot.majflt
  agg.ctx_switches_voluntary = tot.nvcsw
  agg.ctx_switches_involuntary = tot.nivcsw
  local rx, tx = net_bytes(self.root)
  if rx and self.net0[1] then
    self.net_last = { rx - self.net0[1], tx - self.net0[2] }
  end
  if self.net_last then
    agg.sys_net_rx_bytes, agg.sys_net_tx_bytes = self.net_last[1], self.net_last[2]
    if parent then
      parent.sys_net_rx_bytes, parent.sys_net_tx_bytes = self.net_last[1], self.net_last[2]
    end
  end
  if (self.opts.offcpu or self.opts.syscalls) and self.tree.bpf then
    agg.ebpf = {}
    if self.opts.offcpu then
      agg.ebpf.offcpu = self:_offcpu_stats(now)
    end
    if self.opts.syscalls then
      local syscalls = require("denet.syscalls")
      local snap = syscalls.snapshot(self.tree.bpf)
      snap.t0 = self.sc_t0
      agg.ebpf.syscalls = syscalls.monitor_fields(snap, self.sc_prev)
      self.sc_prev = { total = agg.ebpf.syscalls.total, t = snap.t }
    end
  end
  agg.processes_started = self.started
  agg.processes_exited = self.exited
  agg.ts_ms = ts_ms
  agg.uptime_secs = agg.uptime_secs or round(now - self.t0_boot, 2)

  self.prev_t = now
  self.samples = self.samples + 1
  local rec
  if self.exclude_children then
    rec = {}
    for k, v in pairs(parent or {}) do
      rec[k] = v
    end
    rec.kind = "sample"
    rec.ts_ms = ts_ms
    rec.cpu_usage = agg.cpu_usage -- the root's own, measured like the tree's
    rec.cpu_time_secs = agg.cpu_time_secs
    rec.process_count = agg.process_count
  else
    rec = { kind = "tree", ts_ms = ts_ms, parent = parent or cjson.null, children = children, aggregated = agg }
  end
  self.last_record = rec
  if self.on_sample then
    self.on_sample(rec)
  end
  return rec
end

--- The root has exited and was reaped with this rusage (run mode): count
--- its exact CPU time and faults; its I/O comes from its last sample.
local DYNAMIC = { ts_ms = true, cpu_usage = true, uptime_secs = true }

--- A record as one JSON line (no newline). Tree records reuse, for each
--- child that did not run since its last read, the JSON of what did not
--- change, so idle processes cost a string.format, not a full encode.
function Monitor:encode(rec)
  if rec.kind ~= "tree" then
    return cjson.encode(rec)
  end
  local prefixes, cpus, ups = self.jp, self.jc, self.ju
  local children = rec.children
  local n = #children
  for i = 1, n do
    local c = children[i]
    local st = self.procs[c.pid]
    local m = c.metrics
    local cached = st and st.json_for == st.snap and st.json
    if not cached then
      local static = {}
      for k, v in pairs(m) do
        if not DYNAMIC[k] then
          static[k] = v
        end
      end
      local inner = cjson.encode(static):sub(2, -2)
      cached = string.format('{"pid":%d,"command":%s,"metrics":{%s%s', c.pid, cjson.encode(c.command), inner,
        inner ~= "" and "," or "")
      if st then
        st.json, st.json_for = cached, st.snap
      end
    end
    prefixes[i], cpus[i], ups[i] = cached, m.cpu_usage, m.uptime_secs
  end
  rec.children = nil
  local head = cjson.encode(rec)
  rec.children = children
  return head:sub(1, -2) .. ',"children":' .. core.json_children(prefixes, cpus, ups, n, rec.ts_ms) .. "}"
end

function Monitor:root_exited(rusage)
  local st = self.procs[self.root]
  if st then
    self:_depart(st, rusage)
  end
end

--- Run until the root exits, the monotonic time opts.stop_at, or a
--- signal. Returns the reason: "exit", "duration", "signal" (and the
--- signal and its si_code). Samples are taken on the adaptive schedule,
--- each deadline computed from the previous one, so there is no drift.
function Monitor:run(opts)
  opts = opts or {}
  local stop_at = opts.stop_at
  local reason, sig, si_code
  local timer
  self.deadline = self.deadline or (self.t0_mono + self.base)
  local function arm()
    local fire = self.deadline
    if stop_at and stop_at < fire then
      fire = stop_at
    end
    timer:at(fire)
  end
  timer = denet.timer(function()
    local now = core.monotonic()
    if stop_at and now >= stop_at - 1e-4 and now < self.deadline - 1e-4 then
      reason = "duration"
      return
    end
    self:sample()
    self:_check_root_gone()
    repeat
      self.deadline = self.deadline + M.interval_at(self.deadline - self.t0_mono, self.base, self.max)
    until self.deadline > now
    if stop_at and now >= stop_at - 1e-4 then
      reason = "duration"
      return
    end
    arm()
  end)
  arm()
  local exit_watch
  if self.proc then
    -- readable once the command has exited (it stays a zombie for
    -- collect_root to read); -1 when it was reaped already
    local fd = self.proc.c:pidfd()
    if fd >= 0 then
      exit_watch = denet.watch_fd(fd, function()
        reason = "exit"
        exit_watch:close()
      end)
    else
      reason = "exit"
    end
  end
  denet.with_signals_deferred(function()
    while not reason and not self.root_gone do
      local _, s, code = denet.poll(-1)
      if s ~= 0 and not reason then
        reason, sig, si_code = "signal", s, code
      end
      if self.stop_requested and not reason then
        -- a plugin ended the run: as when the duration is over
        self.stop_requested = false
        reason = "duration"
      end
    end
  end)
  timer:close()
  if exit_watch then
    exit_watch:close()
  end
  if not reason and self.root_gone then
    reason = "exit"
  end
  return reason, sig, si_code
end

--- End the run as if the duration were over (from a callback: run()
--- returns "duration" once the callback is done).
function Monitor:request_stop()
  self.stop_requested = true
end

function Monitor:_check_root_gone()
  if not self.proc and not self.procs[self.root] then
    self.root_gone = true
  end
end

-- Off-CPU totals of the tree so far, in the original denet's shape
-- (aggregated.ebpf.offcpu): blocked time (run-queue waits apart),
-- blocks, their mean, longest and shortest, per thread, and the threads
-- that blocked the most.
function Monitor:_offcpu_stats(now)
  local sysnames = require("denet.sysnames")
  local offcpu = require("denet.offcpu")
  local threads = {}
  for tid, v in self.tree.bpf:get_table("dn_offcpu_threads"):items() do
    threads[tid] = { pid = v.tgid, tid = tid, comm = ffi.string(v.comm), time_ns = 0, events = 0, by_category = {} }
  end
  local total, events, maxns, minns = 0, 0, 0, nil
  local runq = 0
  for k, v in self.tree.bpf:get_table("dn_offcpu"):items() do
    local ns, n = tonumber(v.total_ns), tonumber(v.count)
    local cat = offcpu.category(k.state, k.syscall >= 0 and sysnames.name(k.syscall) or nil, {})
    if cat == "runqueue" then
      runq = runq + ns
    else
      total, events = total + ns, events + n
      maxns = math.max(maxns, tonumber(v.max_ns))
      minns = math.min(minns or math.huge, tonumber(v.min_ns))
      local t = threads[k.tid]
      if t then
        t.time_ns, t.events = t.time_ns + ns, t.events + n
        t.by_category[cat] = (t.by_category[cat] or 0) + ns
      end
    end
  end
  local stats, top = {}, {}
  for tid, t in pairs(threads) do
    if t.events > 0 then
      stats[t.pid .. ":" .. tid] = { comm = t.comm, time_ns = t.time_ns, events = t.events, by_category = t.by_category }
      top[#top + 1] = t
    end
  end
  table.sort(top, function(a, b)
    return a.time_ns > b.time_ns
  end)
  local tops = {}
  for i = 1, math.min(5, #top) do
    local t = top[i]
    tops[i] = { pid = t.pid, tid = t.tid, comm = t.comm, time_ms = round(t.time_ns / 1e6, 3),
      percentage = round(total > 0 and 100 * t.time_ns / total or 0, 2) }
  end
  return {
    total_time_ns = total, total_events = events, avg_time_ns = events > 0 and math.floor(total / events) or 0,
    max_time_ns = maxns, min_time_ns = minns or 0, runqueue_time_ns = runq, thread_stats = stats,
    top_blocking_threads = tops,
  }
end

--- After the root exited (run mode): wait for it, take the final sample
--- (its zombie still shows its last I/O), reap it and count its exact
--- rusage. Returns its exit code.
function Monitor:collect_root()
  if not self.proc then
    return nil
  end
  -- the zombie's counters first, then the exact rusage
  local st = self.procs[self.root]
  if st then
    local buf, n = self.ptab:sample(false, false)
    for i = 0, n - 1 do
      local s = buf[i]
      if s.pid == self.root and band(s.flags, GONE) == 0 then
        st.last = sample_counters(s, st)
      end
    end
  end
  local code, ru = self.proc:wait()
  self:root_exited(ru)
  return code
end

--- Stop: take the final sample and release the BPF programs. Returns the
--- final record.
function Monitor:finish()
  -- orphans that exited: reap them so their rusage counts
  local rec = self:sample()
  self.tree:close()
  return rec
end

--- Environment facts for the optional `env` record.
function M.env_record()
  local uname = core.uname()
  local cpuinfo = core.read_file("/proc/cpuinfo", 1048576) or ""
  local model = cpuinfo:match("model name%s*:%s*([^\n]+)")
  local phys, cores, siblings = {}, tonumber(cpuinfo:match("cpu cores%s*:%s*(%d+)")),
    tonumber(cpuinfo:match("siblings%s*:%s*(%d+)"))
  local nphys = 0
  for id in cpuinfo:gmatch("physical id%s*:%s*(%d+)") do
    if not phys[id] then
      phys[id] = true
      nphys = nphys + 1
    end
  end
  local numa = 0
  for _, name in ipairs(core.list_dir("/sys/devices/system/node") or {}) do
    if name:match("^node%d+$") then
      numa = numa + 1
    end
  end
  local function first(path)
    local s = core.read_file(path)
    return s and s:match("[^\n]+")
  end
  local thp = first("/sys/kernel/mm/transparent_hugepage/enabled")
  return {
    kind = "env",
    ts_ms = math.floor(core.realtime() * 1000),
    host = uname.nodename,
    kernel = uname.release,
    lscpu = {
      sockets = math.max(nphys, 1),
      cores_per_socket = cores,
      threads_per_core = (cores and siblings and cores > 0) and math.floor(siblings / cores) or nil,
      model = model,
      cpus = #require("denet.sys").online_cpus(),
    },
    numa = numa > 0 and numa or nil,
    cpu_governor = first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
    thp_enabled = thp and thp:match("%[(%w+)%]") or thp,
    cgroup = first("/proc/self/cgroup"),
  }
end

---------------------------------------------------------------------------
-- summaries, computed the same way live and by `denet stats`

local Summary = {}
Summary.__index = Summary

function M.summary()
  return setmetatable({ n = 0, max_processes = 0, max_threads = 0, peak_rss = 0, peak_pss = 0,
    weighted = 0, span = 0, disk_r = 0, disk_w = 0, sys_r = 0, sys_w = 0 }, Summary)
end

--- Feed one record (metadata, tree, sample or summary).
function Summary:add(rec)
  local kind = rec.kind
  if kind == "metadata" then
    self.t0_ms = rec.t0_ms
    return
  elseif kind == "summary" then
    self.exit_code = rec.exit_code
    return
  elseif kind ~= "tree" and kind ~= "sample" then
    return
  end
  local a = kind == "tree" and rec.aggregated or rec
  if type(a) ~= "table" then
    return
  end
  local ts = rec.ts_ms or a.ts_ms
  self.n = self.n + 1
  self.t0_ms = self.t0_ms or ts
  local prev = self.last_ts or self.t0_ms
  local dt = math.max(0, (ts - prev) / 1000)
  self.weighted = self.weighted + (a.cpu_usage or 0) * dt
  self.span = self.span + dt
  self.last_ts = ts
  self.max_processes = math.max(self.max_processes, a.process_count or (kind == "sample" and 1 or 0))
  self.max_threads = math.max(self.max_threads, a.thread_count or 0)
  self.peak_rss = math.max(self.peak_rss, a.mem_rss_kb or 0)
  self.peak_pss = math.max(self.peak_pss, a.mem_pss_kb or 0)
  self.disk_r = math.max(self.disk_r, a.disk_read_bytes or 0)
  self.disk_w = math.max(self.disk_w, a.disk_write_bytes or 0)
  self.sys_r = math.max(self.sys_r, a.syscall_read_bytes or 0)
  self.sys_w = math.max(self.sys_w, a.syscall_write_bytes or 0)
  if a.cpu_time_secs then
    self.cpu_time = math.max(self.cpu_time or 0, a.cpu_time_secs)
  end
end

--- The summary record.
function Summary:result(exit_code)
  local total = self.last_ts and self.t0_ms and (self.last_ts - self.t0_ms) / 1000 or 0
  local ec = exit_code
  if ec == nil then
    ec = self.exit_code
  end
  return {
    kind = "summary",
    total_time_secs = round(total, 3),
    sample_count = self.n,
    max_processes = self.max_processes,
    max_threads = self.max_threads,
    peak_mem_rss_kb = self.peak_rss,
    peak_mem_pss_kb = self.peak_pss,
    avg_cpu_usage = round(self.span > 0 and self.weighted / self.span or 0, 2),
    cpu_time_secs = round(self.cpu_time or self.weighted / 100, 3),
    total_disk_read_bytes = self.disk_r,
    total_disk_write_bytes = self.disk_w,
    total_syscall_read_bytes = self.sys_r,
    total_syscall_write_bytes = self.sys_w,
    exit_code = ec == nil and cjson.null or ec,
  }
end

return M
