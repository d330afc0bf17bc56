-- denet.offcpu.trace: off-CPU tracing of a run's targets. The kernel side
-- (bpf-src/offcpu.c) sums off-CPU time per (thread, user stack, kernel
-- stack, state, syscall); a Tracer is what user space keeps beside it:
-- the window traced, the threads blocked before it began (read from a
-- snapshot and entered into the program's map), their CPU time then, the
-- stack engine's learners, and the processes whose mappings are kept to
-- name their frames after they exit. Reading it is denet.offcpu.report's.
local ffi = require("ffi")
local core = require("denet.core")
local errors = require("denet.errors")
local classify = require("denet.offcpu.classify")
local stacks = require("denet.stacks")
local syms = require("denet.syms")

local M = {}

local Tracer = {}
Tracer.__index = Tracer
M.Tracer = Tracer

--- The options a tracer takes (and their meaning): roots, tid (targets,
--- the run's), min_us, max_us (block length), states (a state mask),
--- user_only, kernel_only (one kind of stack), stack_storage,
--- stack_reuse ("on", "off", "verify"), unwind ("dwarf", "fp": how user
--- stacks are walked), unwind_max_mb (the cap on the unwind tables in the
--- kernel), python_frames (false: none; denet.stacks.python), stack_depth (frames kept),
--- threads ("user" or "kernel": only those), kernel_threads (the verdict
--- may name one).
M.OPTS = { "min_us", "max_us", "states", "user_only", "kernel_only", "stack_storage", "stack_reuse", "unwind",
  "unwind_max_mb", "python_frames",
  "stack_depth", "threads", "kernel_threads" }

--- The -D flags of opts: what changes the program's shape (the stack
--- kinds, their reuse, the stack map's size).
function M.plan(opts)
  local f = stacks.cflags{ user_only = opts.user_only, kernel_only = opts.kernel_only, reuse = opts.stack_reuse,
    unwind = opts.unwind, python = opts.python_frames,
    storage = opts.stack_storage }
  -- the syscall a thread blocked in is read from the registers it saved
  -- at kernel entry: off-CPU analysis alone runs no program per syscall
  f[#f + 1] = "-DDN_INSYS_REGS"
  if opts.stack_reuse ~= "off" and not opts.kernel_only then
    -- nothing is ever mapped below vm.mmap_min_addr: a user stack walk
    -- that ends below it need not be retried
    local min_addr = tonumber((core.read_file("/proc/sys/vm/mmap_min_addr") or ""):match("%d+"))
    if min_addr then
      f[#f + 1] = string.format("-DDN_MMAP_MIN_ADDR=%dULL", min_addr)
    end
  end
  return f
end

local THREADS = { user = 1, kernel = 2 } -- enum dn_offcpu_threads (offcpu.c)

--- The values of opts for offcpu.c's config map (dn_offcpu_cfg): what
--- changes from run to run, without a new compile.
function M.config(opts)
  if opts.threads and not require("denet.kernel").has("btf") then
    errors.raise("user and kernel threads cannot be told apart on this kernel (no BTF)")
  end
  return {
    min_ns = math.floor((opts.min_us or 0) * 1000),
    max_ns = opts.max_us and math.floor(opts.max_us * 1000) or 0,
    states = opts.states or 0,
    threads = THREADS[opts.threads] or 0,
  }
end

--- Before the program is built: a tracer of running processes reads the
--- threads blocked as it begins right after its probes go live, so the
--- snapshot's iterator is loaded now.
function M.prepare(_, target)
  if not (target and target.cmd and #target.cmd > 0) then
    require("denet.snapshot").prepare()
  end
end

-- The processes whose threads are read as tracing begins: the target
-- thread's, or the target processes' (those of live, the tracked set,
-- when known; else with their descendants now); nil: every process.
local function target_pids(target, live)
  if target.tid then
    local status = core.read_file(string.format("/proc/%d/status", target.tid)) or ""
    return { tonumber(status:match("Tgid:%s*(%d+)")) }
  elseif target.pids and #target.pids > 0 then
    local pids = {}
    if live then
      for pid in pairs(live) do
        pids[#pids + 1] = pid
      end
    else
      local procfs = require("denet.procfs")
      for _, pid in ipairs(target.pids) do
        pids[#pids + 1] = pid
        for _, c in ipairs(procfs.descendants(pid)) do
          pids[#pids + 1] = c
        end
      end
    end
    return pids
  end
end

--- Right before the probes go live, for a tracer of running processes:
--- the threads of the targets (denet.snapshot.take), with their user
--- stacks, the slow part of entering the threads blocked as the window
--- begins. Once the probes are live they are read again without stacks,
--- so the gap in which a block can end unseen is short; a block that went
--- on since keeps the stack read here. Returns the threads (start's pre).
function M.before_attach(opts, target, bpf)
  if not target or (target.cmd and #target.cmd > 0) then
    return nil
  end
  local pids = target_pids(target)
  if pids and #pids == 0 then
    return nil
  end
  -- the targets' mappings (every process's, machine-wide) and their
  -- files' tables, for the unwinder, before tracing starts
  local uw = bpf and bpf.unwinder
  if uw then
    uw.max_bytes = opts.unwind_max_mb and opts.unwind_max_mb * 2 ^ 20 or uw.max_bytes
    local self_pid = core.ids().pid
    local all = pids
    if not all then
      all = {}
      for _, name in ipairs(core.list_dir("/proc") or {}) do
        all[#all + 1] = tonumber(name:match("^%d+$"))
      end
    end
    for _, pid in ipairs(all) do
      if pid ~= self_pid then
        uw:load_proc(pid)
      end
    end
  end
  -- every CPU's clock offset, so the read after needs none measured
  local all = {}
  for _, cpu in ipairs(require("denet.sys").online_cpus()) do
    all[cpu] = true
  end
  return require("denet.snapshot").take(pids, core.ids().pid, { stacks = opts.stacks, cpus = all })
end

--- Off-CPU tracing of the run ctx (its program has offcpu.c: bpf,
--- program, tree, proc, t0_ns (when the window began) and target), with
--- opts. Threads blocked when it began are entered as blocked since then
--- (pre: M.before_attach's threads, if it ran), and the stack engine's
--- learners start. Returns the tracer.
function M.new(ctx, opts, pre)
  local self = setmetatable({ ctx = ctx, opts = opts, bpf = ctx.bpf, tree = ctx.tree, program = ctx.program },
    Tracer)
  -- threads blocked since before the window are accounted from its start
  -- (a held command has none), read as soon as the targets are known, so
  -- few wake unseen in between
  if not ctx.proc then
    self:seed_blocked(pre)
  end
  self.engine = stacks.start(self.bpf, self.program,
    { max_bytes = opts.unwind_max_mb and opts.unwind_max_mb * 2 ^ 20 })
  self:capture()
  -- the traced processes' mappings for the unwinder (a held command's
  -- are taken at its exec; the tables of what it maps are ready first)
  local cmd = ctx.target and ctx.target.cmd
  if cmd and cmd[1] then
    self.engine:preload(cmd[1])
  end
  for pid in pairs(self.tree.live) do
    if not ctx.proc or pid ~= ctx.proc.pid then
      self.engine:process(pid, true)
    end
  end
  return self
end

--- When the traced window began (ns, CLOCK_MONOTONIC): as the probes
--- went live, or as a held command was let go.
function Tracer:t0_ns()
  return self.ctx.t0_ns
end

local BPF_NOEXIST = 1

-- Enter thread t of a snapshot (blocked since since_ns, before the window
-- began at t0_ns) into the program's thread table tab; false when the
-- program already has it (it switched out since: its own).
local function seed_one(tab, t, st, t0_ns)
  local v = tab.leaf.ct()
  -- (one that blocked after t0_ns, before the program watched it, counts
  -- from when it blocked)
  t.seeded_ns = math.floor(math.max(t0_ns, t.since_ns))
  v.tgid, v.start, v.before, v.state, v.syscall = t.pid, t.seeded_ns, math.max(0, t0_ns - t.since_ns), st,
    t.syscall
  -- its CPU time at the block's start, should the switch that ends it
  -- not be seen
  v.runtime = t.runtime_ns or 0
  v.kstack = stacks.STACK_SNAPSHOT
  v.ustack = t.kernel and stacks.STACK_NONE or stacks.STACK_SNAPSHOT
  ffi.copy(v.comm, t.comm, math.min(#t.comm, 15))
  return pcall(tab.set, tab, t.tid, v, BPF_NOEXIST)
end

-- A thread that woke between the snapshot and its entry is not blocked
-- since then: look again, and take back those entries.
local function unseed_woken(tab, pids, self_pid, preblocked)
  local now = {}
  for _, t in ipairs(require("denet.snapshot").take(pids, self_pid, { stacks = false })) do
    now[t.tid] = t
  end
  for tid, t in pairs(preblocked) do
    local again = now[tid]
    -- (one woken but not yet on a CPU has the same exec_start: its block
    -- goes on until the program sees it switch in)
    if not again or again.exec_start ~= t.exec_start then
      local v = tab:get(tid)
      if v and v.kstack == stacks.STACK_SNAPSHOT and tonumber(v.start) == t.seeded_ns then
        tab:delete(tid)
      end
      preblocked[tid] = nil
    end
  end
end

-- The user stacks of the threads read again once the probes were live
-- (without stacks): a block that went on since the read before them
-- (pre_tid: tid -> thread) keeps its stack; one that began in between is
-- walked now.
local function restack(preblocked, pre_tid, opts)
  if opts.stacks == false then
    return
  end
  local snapshot = require("denet.snapshot")
  for tid, t in pairs(preblocked) do
    local p = pre_tid[tid]
    if p and p.exec_start == t.exec_start and p.uaddrs then
      t.uaddrs, t.uleaf, t.utrunc = p.uaddrs, p.uleaf, p.utrunc
    elseif t.regs then
      t.uaddrs, t.uleaf, t.utrunc = snapshot.user_stack(t.pid, t.regs.ip, t.regs.sp, t.regs.bp)
    end
  end
end

--- Threads of the targets that are blocked as tracing begins never switch
--- out inside the window: enter each into the program's thread table
--- (bpf: a program with offcpu.c) as blocked since t0_ns, when the window
--- began (how long before is kept too), with its stacks (denet.snapshot).
--- pids: the tracked processes (nil: every one but denet); opts: tid,
--- threads, states as for a tracer, and stacks = false when no report will
--- show the stacks (they are not read then); pre: the threads read with
--- their stacks just before the probes went live (M.before_attach), or nil
--- to read the stacks now. Returns preblocked (tid -> the snapshot's
--- thread) and runtime0 (tid -> { pid, comm, ns: its CPU time now,
--- kernel }), the base of on-CPU times.
function M.seed_blocked(bpf, pids, opts, t0_ns, pre)
  local preblocked, runtime0 = {}, {}
  if pids and #pids == 0 then
    return preblocked, runtime0
  end
  local snapshot = require("denet.snapshot")
  local self_pid = core.ids().pid
  local tab = bpf:get_table("dn_offcpu_threads")
  local read, pre_tid = { stacks = opts.stacks }, nil
  if pre then
    read, pre_tid = { stacks = false, offsets = pre.offsets }, {}
    for _, t in ipairs(pre) do
      pre_tid[t.tid] = t
    end
  end
  for _, t in ipairs(snapshot.take(pids, self_pid, read)) do
    local kept = (not opts.tid or t.tid == opts.tid) and t.pid ~= self_pid
      and not (opts.threads == "user" and t.kernel) and not (opts.threads == "kernel" and not t.kernel)
    if kept then
      runtime0[t.tid] = { pid = t.pid, comm = t.comm, ns = t.runtime_ns, kernel = t.kernel }
      local st = snapshot.trace_state(t.state_word)
      if t.state ~= "R" and st ~= 0 and t.since_ns and classify.state_kept(opts.states, st)
          and seed_one(tab, t, st, t0_ns) then
        preblocked[t.tid] = t
      end
    end
  end
  if next(preblocked) ~= nil then
    unseed_woken(tab, pids, self_pid, preblocked)
  end
  if pre_tid then
    restack(preblocked, pre_tid, opts)
  end
  return preblocked, runtime0
end

--- Account the threads blocked as tracing begins (M.seed_blocked) for
--- this tracer's targets (pre: as M.seed_blocked's).
function Tracer:seed_blocked(pre)
  local target = self.ctx.target or {}
  local pids = target_pids(target, self.tree.live)
  local o = setmetatable({ tid = target.tid }, { __index = self.opts })
  self.preblocked, self.runtime0 = M.seed_blocked(self.bpf, pids, o, self:t0_ns(), pre)
end

--- Keep symbols of the traced processes resolvable after they exit:
--- capture their mappings now (the run calls this at intervals and after
--- exec).
function Tracer:capture()
  for pid in pairs(self.tree.live) do
    syms.capture(pid)
  end
  -- (and the Python interpreters found before they began are checked)
  if self.engine.python then
    self.engine.python:tick()
  end
end

--- Process pid exec'd: what was captured of its old image goes (its
--- addresses would name the old image's functions), the new one is
--- captured now (the executable and the dynamic loader are mapped once
--- the exec returns) and twice soon after (the libraries the loader maps
--- within milliseconds, later on a busy machine), so one that exits
--- before the next interval still resolves.
function Tracer:exec(pid)
  syms.forget(pid)
  self.engine:process(pid)
  -- (not once it has left the tree: its pid may be another's by then)
  local function capture()
    if self.tree.live[pid] then
      syms.capture(pid)
    end
    if self.engine.python then
      self.engine.python:tick()
    end
  end
  capture()
  for _, delay in ipairs({ 0.02, 0.1 }) do
    self.ctx:after(delay, capture)
  end
end

--- Process pid was forked by ppid: until it execs, its frames are named
--- from what its parent mapped (it may exit before its own mappings are
--- read: a shell's subshell, a command substitution).
function Tracer:fork(pid, ppid)
  syms.inherit(pid, ppid)
end

--- Blocks that ended so far, and stacks that could not be read (for a
--- live status; the report has the details).
function Tracer:counts()
  local missed, lost = self.bpf:get_table("dn_offcpu_missed"), 0
  for i = 0, 7 do
    lost = lost + tonumber(missed:get(i))
  end
  return tonumber(self.bpf:get_table("dn_offcpu_seen"):sum(0)), lost
end

--- Tracing is over: the run detached every probe (the maps stay), and
--- reports count up to this moment, blocks in progress included, from
--- maps that no program changes any more.
function Tracer:stop()
  self.stopped_ns = self.stopped_ns or core.monotonic_ns()
end

--- Is a thread of kind `kernel` shown by this tracer's threads option?
function Tracer:kind_kept(kernel)
  local th = self.opts.threads
  return not ((th == "kernel" and not kernel) or (th == "user" and kernel))
end

return M
