-- denet.monitor: CPU, memory, I/O and threads of a process tree, sampled
-- at (adaptive) intervals, as records in the original denet's format.
--
-- This is the sampler of the monitor feature (lib/denet/features/monitor.lua),
-- which a run (denet.runner) drives: it reads, and leaves the arithmetic
-- to denet.monitor.account, the summary to denet.monitor.summary, the env
-- record to denet.monitor.env, and the run (target, schedule of the loop,
-- end) to denet.runner:
--
--   local m = monitor.new(run, { interval = 0.1, max_interval = 1 })
--   m:start()                 -- the processes of the tree, the baseline
--   m:schedule(emit)          -- samples on the adaptive schedule, each to emit(rec)
--   m:before_reap(); ...; m:after_reap(rusage); local totals = m:totals()
--
-- Where the numbers come from:
-- * /proc/PID/{stat,io,fd,smaps_rollup} through held fds (host/dn_procfs.c).
-- * The tree (denet.tree): BPF adds every fork of a tracked process in the
--   kernel and reports exits; context switches are counted per process at
--   sched_switch (bpf-src/ctxsw.c), threads that exited included.
-- * Tree totals are exact across processes that come and go between
--   samples (see denet.monitor.account).
-- * A process's first sample compares with its start (a new process) or
--   with the baseline taken when monitoring began: never a 0% first sample.
local ffi = require("ffi")
local bit = require("bit")
local core = require("denet.core")
local errors = require("denet.errors")
local procfs = require("denet.procfs")
local json = require("denet.json")
local account = require("denet.monitor.account")
local env = require("denet.monitor.env")
local sources = require("denet.monitor.sources")

local M = {}

local GONE, IO, PSS, CTXSW, SKIPPED = procfs.GONE, procfs.IO, procfs.PSS, procfs.CTXSW, procfs.SKIPPED
local TCK = procfs.CLK_TCK
local PAGE_KB = procfs.PAGE_KB
local ZOMBIE = string.byte("Z")
local ENFILE, EMFILE = 23, 24
local band = bit.band

local round = account.round
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

local COUNTERS = account.COUNTERS
local zero_counters = account.zero

--- The options of the monitor: interval, max_interval (seconds; 0.1 and
--- 1: the base interval for the first second, then a linear ramp to max
--- by 10 s), exclude_children (the root only: `sample` records),
--- since_process_start (I/O counted from each process's start instead of
--- from when monitoring began), pss_interval (seconds between
--- smaps_rollup reads, default 5: the kernel walks every page table for
--- it), refresh_interval (seconds between reads of processes that did not
--- run, for their resident memory; default 2), no_polling (no samples
--- while it runs), write_env (an env record first), counters (false: no
--- perf counters), hw_counters (say why when there are no hardware
--- counters), energy (say why when there is no RAPL), gpu (NVIDIA GPUs
--- through NVML).
M.OPTS = { "interval", "max_interval", "exclude_children", "since_process_start", "pss_interval",
  "refresh_interval", "no_polling", "write_env", "counters", "hw_counters", "energy", "gpu" }

--- The sampler of run ctx (denet.runner: its tree, proc or target pid,
--- and emit(rec) for each sample), with the options above.
function M.new(ctx, opts)
  errors.check_opts("monitor.new", opts, M.OPTS)
  local self = setmetatable({
    ctx = ctx,
    opts = opts,
    tree = ctx.tree,
    proc = ctx.proc,
    root = ctx.root,
    base = opts.interval or 0.1,
    max = math.max(opts.max_interval or 1, opts.interval or 0.1),
    pss_interval = opts.pss_interval or 5,
    refresh_interval = opts.refresh_interval or 2,
    exclude_children = opts.exclude_children or false,
    since_start = opts.since_process_start or false,
    procs = {},            -- pid -> state
    jp = {}, jc = {}, ju = {}, -- reused by encode()
    gone_parents = {},     -- pid -> sample number when it left
    departed = zero_counters(),
    samples = 0,
    late = 0,
    mypid = core.ids().pid,
    started = 0,
    exited = 0,
    last_cpu_total = 0,
  }, Monitor)
  local ppid, _, _, state = core.read_stat(self.root)
  if not ppid or state == ZOMBIE then
    errors.raise(string.format("no such process: %d", self.root))
  end
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

-- The pids of live (pid -> { ppid }) not in `except`, parents before
-- their children: the process table reads in the order processes were
-- added, and reading a parent before its child is what keeps a child
-- reaped during a sample from being counted twice.
local function parents_first(live, except)
  local depth, list = {}, {}
  local function depth_of(pid)
    local d, p, seen = 0, pid, 0
    while live[p] and seen < 64 do
      if depth[p] then
        d = d + depth[p]
        break
      end
      p, d, seen = live[p].ppid, d + 1, seen + 1
    end
    depth[pid] = d
    return d
  end
  for pid in pairs(live) do
    if not (except and except[pid]) then
      list[#list + 1] = pid
      depth_of(pid)
    end
  end
  table.sort(list, function(a, b)
    if depth[a] ~= depth[b] then
      return depth[a] < depth[b]
    end
    return a < b
  end)
  return list
end

-- State of a newly watched process. born: started after monitoring began.
function Monitor:_watch(pid, ppid, born)
  if self.procs[pid] then
    return self.procs[pid]
  end
  local ok, io_ok, errno = self.ptab:add(pid)
  if not ok then
    if errno == EMFILE or errno == ENFILE then
      -- (denet raised its soft limit to the hard one at start)
      require("denet.util").note_once("too many open files: some processes of the tree are not watched "
        .. "(each takes 6 file descriptors; raise the hard limit: ulimit -Hn)")
    end
    return nil
  end
  local st = { pid = pid, ppid = ppid, born = born, io_ok = io_ok, base = zero_counters() }
  self.procs[pid] = st
  return st
end

--- A process of the tree forked, exec'd or exited (the run passes the
--- tree's events on).
function Monitor:on_process(ev)
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
end

-- The counters of one reading. With exclude_children the root's CPU time
-- is its own: the children it reaps are not monitored, and the kernel adds
-- their CPU time to the root's when it reaps them.
function Monitor:_counters(s)
  local c = account.counters(s, TCK, IO)
  if self.exclude_children then
    c.cpu = c.own_cpu
  end
  return c
end

--- Begin: watch the processes of the tree (the run tracks the root and,
--- when attaching, its existing descendants) and take the baseline.
function Monitor:start()
  local live = self.tree.live
  for _, pid in ipairs(parents_first(live)) do
    local st = self:_watch(pid, live[pid].ppid, false)
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
      local c = self:_counters(s)
      st.prev_t = self.t0_boot
      -- without BPF the context switch counts are /proc's, since the
      -- process started
      account.baseline(st, c, self.proc and s.pid == self.root, self.since_start,
        band(s.flags, CTXSW) ~= 0 and { tonumber(s.nvcsw), tonumber(s.nivcsw) } or nil)
    end
  end
  self.net0 = { net_bytes(self.root) }
  self:_open_sources()
  self.prev_t = self.t0_boot
  self.last_pss_t = -math.huge
  self.last_full_t = -math.huge
  return self
end

-- A process left the tree: keep what the kernel will not pass on to a
-- tracked parent. rusage: exact CPU and faults when denet reaped it itself
-- (then no tracked parent will ever see them).
function Monitor:_depart(st, rusage)
  self.exited = self.exited + 1
  -- a tracked parent (still here, or gone in the last samples) reaped it
  -- and passed its time on; one that left earlier cannot have
  local ppid = st.last_ppid or st.ppid
  local gone_at = self.gone_parents[ppid]
  local kept_by_parent = not rusage and (self.procs[ppid] ~= nil or (gone_at and self.samples - gone_at <= 2))
  account.depart(self.departed, st, rusage, kept_by_parent)
  self.ptab:remove(st.pid)
  self.tree:remove(st.pid)
  self.procs[st.pid] = nil
  self.gone_parents[st.pid] = self.samples
end

-- The tree's other sources (denet.monitor.sources): perf counters opened
-- on its tasks (a command held before exec: its one task; attached: the
-- threads of its processes), pressure, energy, GPUs.
function Monitor:_open_sources()
  local pids = self.exclude_children and { self.root } or parents_first(self.tree.live)
  self.sources = sources.open({ root = self.root, pids = pids, run = self.proc ~= nil,
    threads_only = self.exclude_children, opts = self.opts,
    in_tree = function(pid)
      return self.procs[pid] ~= nil or self.tree.live[pid] ~= nil
    end })
end

--- Which optional sources resolved (the metadata's capabilities).
function Monitor:capabilities()
  return self.sources:capabilities()
end

-- The sources' figures of this sample into agg (dt: seconds since the
-- last).
function Monitor:_read_sources(agg, dt)
  self.ncpu = self.ncpu or math.max(1, #require("denet.sys").online_cpus())
  self.sources:read(agg, { cpu_share = (agg.cpu_usage or 0) / 100 / self.ncpu, dt = dt })
end

-- Add one live process's metrics to the tree's sums.
local function tally(agg, m)
  agg.mem_rss_kb = agg.mem_rss_kb + m.mem_rss_kb
  agg.mem_vms_kb = agg.mem_vms_kb + m.mem_vms_kb
  agg.mem_pss_kb = agg.mem_pss_kb + (m.mem_pss_kb or 0)
  agg.mem_uss_kb = agg.mem_uss_kb + (m.mem_uss_kb or 0)
  agg.thread_count = agg.thread_count + m.thread_count
  agg.fd_count = agg.fd_count + (m.fd_count or 0)
  agg.process_count = agg.process_count + 1
end

-- Read the watched processes now: those that ran since their last read,
-- or all of them at a full refresh. Returns the samples (buf, n) and the
-- kernel's scheduling counters (ctx, gen) the reads were chosen by.
function Monitor:_read(now)
  -- forget parents that left samples ago: their children have been seen
  -- since, and their pids may be reused
  for pid, at in pairs(self.gone_parents) do
    if self.samples - at > 2 then
      self.gone_parents[pid] = nil
    end
  end
  self.tree:refresh()
  if self.tree.mode == "proc" then
    local live = self.tree.live
    for _, pid in ipairs(parents_first(live, self.procs)) do
      self:_watch(pid, live[pid].ppid, true)
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
  return buf, n, ctx, gen
end

-- The processes that left: gone ones, and orphans re-parented to denet
-- that have exited (reaped now, for their exact rusage). Children before
-- parents: a child whose parent also left in this interval was reaped by
-- it, and its time went up the tree with the parent's. Returns the set of
-- pids that left.
function Monitor:_departures(buf, n)
  local left = {}
  for i = n - 1, 0, -1 do
    local s = buf[i]
    local st = self.procs[s.pid]
    if st and s.pid ~= self.root or (st and not self.proc) then
      if band(s.flags, GONE) ~= 0 then
        left[s.pid] = true
        self:_depart(st, nil)
      elseif s.state == ZOMBIE and s.ppid == self.mypid and band(s.flags, SKIPPED) == 0 then
        st.last = self:_counters(s)
        local code, ru = core.reap(s.pid)
        if code then
          left[s.pid] = true
          self:_depart(st, ru)
        end
      end
    end
  end
  return left
end

-- Add counters `add` to the tree's totals tot.
local function add_to(tot, add)
  for j = 1, #COUNTERS do
    local k = COUNTERS[j]
    tot[k] = tot[k] + (add[k] or 0)
  end
end

-- A process that did not run since its last read: the same figures, a new
-- time; its tables are reused (sm: the sample being made).
function Monitor:_reuse(s, st, sm)
  add_to(sm.tot, st.tot_add)
  local m = st.m
  m.ts_ms = sm.ts_ms
  m.cpu_usage = 0
  m.uptime_secs = math.max(0, math.floor(sm.now - st.snap.starttime / TCK))
  st.prev_t = sm.now
  tally(sm.agg, m)
  if s.pid == self.root then
    sm.parent = m
  else
    sm.children[#sm.children + 1] = st.child
  end
end

-- What was read of a process (s) kept in its state st: its counters and
-- a snapshot of its stat, its name, and its context switch counts (the
-- kernel's, when BPF counts them).
function Monitor:_keep(s, st, sm)
  local c = self:_counters(s)
  local snap = {
    state = s.state, starttime = tonumber(s.starttime), rss_pages = tonumber(s.rss_pages),
    vsize = tonumber(s.vsize), threads = tonumber(s.threads), processor = tonumber(s.processor),
    fd_count = s.fd_count >= 0 and tonumber(s.fd_count) or nil,
  }
  st.snap, st.last, st.last_ppid = snap, c, s.ppid
  st.comm = ffi.string(s.comm)
  local cx = sm.ctx and sm.ctx[s.pid]
  if cx and cx[5] ~= sm.gen then
    cx = nil -- stale: the kernel stopped tracking it (it exited)
  end
  st.seen = cx and { cx[1], cx[2], cx[3] }
  if cx then
    st.ctx = st.seen
  elseif band(s.flags, CTXSW) ~= 0 then
    st.ctx = { tonumber(s.nvcsw), tonumber(s.nivcsw) }
  end
  if band(s.flags, PSS) ~= 0 then
    st.pss_kb, st.uss_kb = tonumber(s.pss_kb), tonumber(s.uss_kb)
  end
  return c, snap
end

-- A process's part of the sample: its metrics, and its counters added to
-- the tree's (own + reaped children, zombies included).
function Monitor:_account(s, st, c, snap, sm)
  local ctxv = st.final_ctx or st.ctx
  local add = account.contribution(st, c, ctxv)
  add_to(sm.tot, add)
  st.tot_add = add
  if snap.state == ZOMBIE then
    st.m = nil -- a zombie is not listed
    return
  end
  local m = account.process(st, c, snap, sm.now, sm.aopts)
  m.ts_ms = sm.ts_ms
  m.mem_pss_kb = st.pss_kb
  m.mem_uss_kb = st.uss_kb
  m.fd_count = snap.fd_count
  m.ctx_switches_voluntary = ctxv and (ctxv[1] - (st.base.nvcsw or 0)) or nil
  m.ctx_switches_involuntary = ctxv and (ctxv[2] - (st.base.nivcsw or 0)) or nil
  tally(sm.agg, m)
  st.m = m
  if s.pid == self.root then
    sm.parent = m
  else
    -- the process's name, as /proc/PID/comm has it (the original's
    -- `command`)
    st.child = { pid = s.pid, command = st.comm, metrics = m }
    sm.children[#sm.children + 1] = st.child
  end
end

-- The tree's figures from its totals, and the network and memory
-- pressure of its root, into sm.agg.
function Monitor:_aggregate(sm, dt)
  local agg, tot = sm.agg, sm.tot
  add_to(tot, self.departed)
  agg.cpu_usage, self.last_cpu_total = account.tree_cpu(tot.cpu, self.last_cpu_total, dt)
  agg.cpu_time_secs = round(self.last_cpu_total, 3)
  agg.disk_read_bytes, agg.disk_write_bytes = tot.read_bytes, tot.write_bytes
  agg.syscall_read_bytes, agg.syscall_write_bytes = tot.rchar, tot.wchar
  agg.page_faults_cached, agg.page_faults_disk = tot.minflt, tot.majflt
  agg.ctx_switches_voluntary, agg.ctx_switches_involuntary = tot.nvcsw, tot.nivcsw
  -- the network namespace's bytes, as the original reported them
  local rx, tx = net_bytes(self.root)
  if rx and self.net0[1] then
    self.net_last = { rx - self.net0[1], tx - self.net0[2] }
  end
  local net = self.net_last or { 0, 0 }
  agg.sys_net_rx_bytes, agg.sys_net_tx_bytes = net[1], net[2]
  self.net_tail = string.format(',"sys_net_rx_bytes":%d,"sys_net_tx_bytes":%d', net[1], net[2])
  local parent = sm.parent
  if parent then
    parent.sys_net_rx_bytes, parent.sys_net_tx_bytes = net[1], net[2]
  end
  self:_read_sources(agg, dt)
  if parent and agg.psi_mem then
    parent.psi_mem = agg.psi_mem
  end
  agg.processes_started = self.started
  agg.processes_exited = self.exited
  -- the run's other features' figures (off-CPU time, syscalls)
  agg.ebpf = self.ctx:figures()
end

-- The record of sample sm: a tree record, or with exclude_children the
-- root's own flat sample.
function Monitor:_record(sm)
  local agg, parent = sm.agg, sm.parent
  if not self.exclude_children then
    return { kind = "tree", ts_ms = sm.ts_ms, parent = parent or json.null, children = sm.children,
      aggregated = agg }
  end
  local rec = {}
  for k, v in pairs(parent) do
    rec[k] = v
  end
  rec.kind = "sample"
  rec.ts_ms = sm.ts_ms
  rec.cpu_usage = agg.cpu_usage -- the root's own, measured like the tree's
  rec.cpu_time_secs = agg.cpu_time_secs
  rec.process_count = agg.process_count
  for _, k in ipairs(sources.FIELDS) do
    rec[k] = agg[k]
  end
  return rec
end

--- Take one sample now. Returns the record ("tree", or "sample" with
--- exclude_children; nil then when the root has just left). With
--- opts.quiet (the final accounting after the root left) no record is made
--- and the tree's totals are returned instead.
function Monitor:sample(opts)
  errors.check_opts("sample", opts, { "quiet" })
  local quiet = opts and opts.quiet
  local now = core.boottime()
  local dt = math.max(now - self.prev_t, 1e-6)
  local buf, n, ctx, gen = self:_read(now)
  local sm = {
    now = now, ts_ms = math.floor(core.realtime() * 1000), ctx = ctx, gen = gen, tot = zero_counters(),
    children = json.array(), aopts = { tck = TCK, page_kb = PAGE_KB, t0_boot = self.t0_boot, prev_t = self.prev_t },
    agg = {
      cpu_usage = 0, mem_rss_kb = 0, mem_vms_kb = 0, mem_pss_kb = 0, mem_uss_kb = 0,
      disk_read_bytes = 0, disk_write_bytes = 0, syscall_read_bytes = 0, syscall_write_bytes = 0,
      page_faults_cached = 0, page_faults_disk = 0, thread_count = 0, fd_count = 0,
      ctx_switches_voluntary = 0, ctx_switches_involuntary = 0, process_count = 0,
      sys_net_rx_bytes = 0, sys_net_tx_bytes = 0,
    },
  }
  local left = self:_departures(buf, n)
  for i = 0, n - 1 do
    local s = buf[i]
    local st = self.procs[s.pid]
    if st and not left[s.pid] and band(s.flags, GONE) == 0 then
      local idle = band(s.flags, SKIPPED) ~= 0 and st.snap ~= nil
      if idle and st.m then
        self:_reuse(s, st, sm)
      elseif idle then
        self:_account(s, st, st.last, st.snap, sm)
      else
        local c, snap = self:_keep(s, st, sm)
        self:_account(s, st, c, snap, sm)
      end
    end
  end
  self:_aggregate(sm, dt)
  if quiet then
    self.tot = sm.tot
    return sm.agg
  end
  sm.agg.ts_ms = sm.ts_ms
  sm.agg.uptime_secs = sm.parent and sm.parent.uptime_secs or math.max(0, math.floor(now - self.t0_boot))
  self.prev_t = now
  if self.exclude_children and not sm.parent then
    -- the root left (or is a zombie) since the last look: there is no
    -- sample of it to give
    return nil
  end
  self.samples = self.samples + 1
  self.last_record = self:_record(sm)
  return self.last_record
end

-- what changes in an idle child's metrics from sample to sample
local DYNAMIC = { ts_ms = true, cpu_usage = true, uptime_secs = true, sys_net_rx_bytes = true, sys_net_tx_bytes = true }

--- A record as one JSON line (no newline), through denet.json. Tree
--- records reuse, for each child that did not run since its last read, the
--- JSON of what did not change, so idle processes cost a string.format, not
--- a full encode.
function Monitor:encode(rec)
  if rec.kind ~= "tree" then
    return json.encode(rec)
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
      local inner = json.encode(static):sub(2, -2)
      cached = string.format('{"pid":%d,"command":%s,"metrics":{%s%s', c.pid, json.encode(c.command), inner,
        inner ~= "" and "," or "")
      if st then
        st.json, st.json_for = cached, st.snap
      end
    end
    prefixes[i], cpus[i], ups[i] = cached, m.cpu_usage, m.uptime_secs
  end
  rec.children = nil
  local head = json.encode(rec)
  rec.children = children
  return head:sub(1, -2) .. ',"children":' .. core.json_children(prefixes, cpus, ups, n, rec.ts_ms, self.net_tail)
    .. "}"
end

function Monitor:root_exited(rusage)
  local st = self.procs[self.root]
  if st then
    self:_depart(st, rusage)
  end
end

--- Sample on the adaptive schedule from now on (none with no_polling):
--- each deadline is computed from the previous one, so there is no
--- drift; deadlines already past when a sample was taken (the loop was
--- held up: a slow callback, a busy machine) are skipped, and counted.
--- Each record goes to emit(rec); an attached root that has gone ends
--- the run.
function Monitor:schedule(emit)
  if self.opts.no_polling then
    return
  end
  local deadline = self.t0_mono + self.base
  local timer
  timer = self.ctx:timer(function()
    local now = core.monotonic()
    -- (an attached process that exited measures nothing: no sample of
    -- its zombie)
    local rec = not self:_check_root_gone() and self:sample()
    if rec then
      emit(rec)
    end
    repeat
      deadline = deadline + M.interval_at(deadline - self.t0_mono, self.base, self.max)
      self.late = self.late + (deadline <= now and 1 or 0)
    until deadline > now
    timer:at(deadline)
  end)
  timer:at(deadline)
end

--- Attached (no command of its own): has the process exited? It is gone,
--- or a zombie its parent has not reaped yet; the run ends then. Returns
--- true once it has.
function Monitor:_check_root_gone()
  if self.proc or self.root_gone then
    return self.root_gone
  end
  local _, _, _, state = core.read_stat(self.root)
  if not self.procs[self.root] or not state or state == string.byte("Z") then
    self.root_gone = true
    self.ctx:request_end("exit")
  end
  return self.root_gone
end

--- The command has exited (run mode) and is about to be reaped: its
--- zombie's counters are read now (it still shows its last I/O).
function Monitor:before_reap()
  local st = self.procs[self.root]
  if self.proc and st then
    local buf, n = self.ptab:sample(false, false)
    for i = 0, n - 1 do
      local s = buf[i]
      if s.pid == self.root and band(s.flags, GONE) == 0 then
        st.last = self:_counters(s)
      end
    end
  end
end

--- The command was reaped with rusage (run mode): its exact CPU time and
--- faults, and those of what it reaped, count from now on.
function Monitor:after_reap(rusage)
  if self.proc then
    self:root_exited(rusage)
  end
end

--- The end: what happened since the last sample (children reaped, the
--- root's exact rusage) is accounted without writing a record (a sample
--- taken once the root is gone would be no measurement of it). Returns
--- the tree's final totals (the aggregated fields of such a sample:
--- cpu_time_secs, disk and syscall bytes, faults, context switches), and
--- what was not seen: process events the kernel's buffer dropped, and
--- samples the schedule skipped.
function Monitor:totals()
  local totals = self:sample({ quiet = true })
  totals.lost_events = self.tree:lost()
  totals.samples_late = self.late
  totals.counters = self.sources:totals()
  self.sources:close()
  return totals
end

--- The env record (denet.monitor.env).
function M.env_record(pid)
  return env.record(pid)
end

--- A summary accumulator (denet.monitor.summary).
function M.summary()
  return require("denet.monitor.summary").new()
end

return M
