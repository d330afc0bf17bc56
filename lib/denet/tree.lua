-- denet.tree: who is being watched. One model of the target process tree,
-- shared by every feature, so the monitor, off-CPU analysis and syscall
-- tracking always agree.
--
-- With BPF (the normal case) the set lives in the kernel map dn_tracked
-- (bpf-src/tree.c): forks of tracked processes are added before the child
-- first runs, exits remove them, and fork/exec/exit reach user space as
-- ring buffer events. Features compose their own BPF C with tree.c into
-- one program (denet.compose; opts.features, opts.text) and filter with
-- dn_wanted(tgid, tid), which follows the run's target: the tree, every
-- thread of the machine but denet's own, or one thread (tree.c's config
-- map).
--
-- Without BPF privileges the tree is found by polling /proc (children of
-- each tracked process at every refresh); processes that live shorter than
-- one refresh are then not seen (their CPU time still reaches their parent
-- through the kernel's accounting of reaped children).
local bit = require("bit")
local ffi = require("ffi")
local core = require("denet.core")
local errors = require("denet.errors")
local procfs = require("denet.procfs")
local sys = require("denet.sys")

local M = {}

local records = require("denet.records")

M.FORK, M.EXEC, M.EXIT = 1, 2, 3
local KIND_NAME = { "fork", "exec", "exit" }

local Tree = {}
Tree.__index = Tree

-- Can this process use BPF? (checked without raising)
local function bpf_usable()
  local ok = sys.privileges()
  return ok and sys.kernel_headers() ~= nil and sys.tracefs() ~= nil
end
M.bpf_usable = bpf_usable

local NEW_OPTS = { "bpf", "features", "text", "cflags", "name", "follow", "on_event", "before_attach" }
local RUN_OPTS = { "bpf", "target", "proc", "features", "text", "cflags", "name", "follow", "on_event",
  "before_attach" }
local TARGET_OPTS = { "roots", "proc", "tid", "features", "text", "cflags", "name", "on_event", "before_attach" }
local PLUGIN_OPTS = { "text", "cflags", "name" }

--- Create the tree model.
--- opts.bpf: true (required), false (never), nil (when usable);
--- opts.features: { name = options } of more features (denet.features)
--- whose BPF parts are built with the tree (features.tree: the tree's own
--- options, its target mode); opts.text: a script's own BPF C ({ name=,
--- text= } items, which can use dn_wanted()); opts.cflags; opts.name (for
--- diagnostics);
--- opts.follow (default true): add forked children;
--- opts.on_event(ev): ev = { kind = "fork"|"exec"|"exit", pid, ppid,
---   comm, filename, ts_ns, nvcsw, nivcsw }.
--- tree.mode is "bpf" or "proc"; tree.bpf the program, tree.program what
--- the composer built.
function M.new(opts)
  errors.check_opts("tree.new", opts, NEW_OPTS)
  opts = opts or {}
  local self = setmetatable({
    on_event = opts.on_event,
    follow = opts.follow ~= false,
    live = {},   -- pid -> { ppid = }
    roots = {},
    forks = 0,
    exits = 0,
    ctx_cache = {},
    ctx_gen = 0,
    ctx_n = 0,
  }, Tree)
  local want = opts.bpf
  if want == nil then
    want = bpf_usable()
  end
  if want then
    local feats = { tree = {} }
    for n, o in pairs(opts.features or {}) do
      feats[n] = o
    end
    self.program = require("denet.compose").build{ features = feats, text = opts.text, cflags = opts.cflags,
      name = opts.name or "tree", before_attach = opts.before_attach }
    self.bpf = self.program.bpf
    self.tracked = self.bpf:get_table("dn_tracked")
    self.threads = self.bpf:get_table("dn_threads")
    self.tidmask = self.bpf:get_table("dn_tidmask")
    local events = self.bpf:get_table("dn_tree_events")
    local on = function(e)
      self:_event(e)
    end
    if self.program:has_flag("-DDN_TREE_PERF") then
      self.events = events:open_perf_buffer(on, { type = records.cname("dn_tree_event"), page_cnt = 16 })
    else
      self.events = events:open_ring_buffer(on, { type = records.cname("dn_tree_event") })
    end
    self.mode = "bpf"
  else
    self.mode = "proc"
  end
  return self
end

function Tree:_event(e)
  local kind = tonumber(e.kind)
  local pid, ppid = tonumber(e.pid), tonumber(e.ppid)
  if kind == M.FORK then
    if not self.follow then
      -- the kernel already added it; keep the set to the roots
      self.tracked:delete(pid)
      return
    end
    self.live[pid] = { ppid = ppid }
    self.forks = self.forks + 1
  elseif kind == M.EXIT then
    self.live[pid] = nil
    self.exits = self.exits + 1
  end
  if self.on_event then
    self.on_event({
      kind = KIND_NAME[kind],
      pid = pid,
      ppid = ppid,
      comm = ffi.string(e.comm),
      filename = kind == M.EXEC and ffi.string(e.filename) or nil,
      ts_ns = tonumber(e.ts_ns),
      nvcsw = tonumber(e.nvcsw),
      nivcsw = tonumber(e.nivcsw),
    })
  end
end

--- Start watching pid (and, with opts.descendants, the processes that
--- already descend from it). In BPF mode it enters dn_tracked at once, so
--- a held child tracked before resume is followed from its first fork.
function Tree:add(pid, ppid, opts)
  self.live[pid] = { ppid = ppid or 0 }
  if self.tracked then
    -- the process first, so threads it creates from now on are added by
    -- the kernel; then the threads it has, marking those on a CPU now
    self.tracked:set(pid, { ppid = ppid or 0 })
    local running = 0
    for _, name in ipairs(core.list_dir("/proc/" .. pid .. "/task") or {}) do
      local tid = tonumber(name)
      local _, _, _, state = core.read_stat(tid)
      local oncpu = state == 82 and 1 or 0 -- 'R'
      running = running + oncpu
      if tid then
        self.threads:set(tid, { tgid = pid, oncpu = oncpu })
        self:_mask(tid, 1)
      end
    end
    if running > 0 then
      self.tracked:set(pid, { ppid = ppid or 0, running = running })
    end
  end
  if opts and opts.root then
    self.roots[pid] = true
  end
  if opts and opts.descendants and self.follow then
    for _, c in ipairs(procfs.descendants(pid)) do
      local cppid = core.read_stat(c)
      if cppid and not self.live[c] then
        self:add(c, cppid)
      end
    end
  end
end

-- Count tid in dn_tidmask, the kernel's cheap first check.
function Tree:_mask(tid, delta)
  local slot = bit.band(tid, 0xffff)
  self.tidmask:set(slot, math.max(0, (self.tidmask:get(slot) or 0) + delta))
end

--- Also watch one thread by tid (features that watch a single thread).
function Tree:add_thread_mask(tid)
  if self.tidmask then
    self:_mask(tid, 1)
  end
end

--- Stop watching pid (it has gone).
function Tree:remove(pid)
  self.live[pid] = nil
  if self.tracked then
    self.tracked:delete(pid)
    self.threads:delete(pid)
  end
end

--- Without BPF: look for children of the tracked processes; calls
--- on_event({kind="fork"}) for each new one. With BPF: nothing to do
--- (events arrive through the loop).
function Tree:refresh()
  if self.mode ~= "proc" or not self.follow then
    return
  end
  local new = {}
  for pid in pairs(self.live) do
    for _, c in ipairs(procfs.children(pid)) do
      if not self.live[c] then
        new[#new + 1] = { pid = c, ppid = pid }
      end
    end
  end
  for _, n in ipairs(new) do
    if not self.live[n.pid] then
      self.live[n.pid] = { ppid = n.ppid }
      self.forks = self.forks + 1
      if self.on_event then
        local _, _, comm = core.read_stat(n.pid)
        self.on_event({ kind = "fork", pid = n.pid, ppid = n.ppid, comm = comm or "?" })
      end
    end
  end
end

--- Scheduling counters of live tracked processes (BPF mode), read in one
--- pass: pid -> { nvcsw, nivcsw, switch-ins, threads on a CPU now, gen }
--- (entries whose gen is not the returned gen are stale); nil without BPF.
--- The tables are reused by the next call.
local task_ptr = records.ptr("dn_task")
local u32_ptr = ffi.typeof("const uint32_t *")

function Tree:ctx_switches()
  if not self.tracked then
    return nil
  end
  -- one batch read of the map, viewed in place (this runs every sample)
  local t = self.tracked
  local keys, leaves, n = core.map_dump(t.fd, 4, t.value_size, t.info.max_entries)
  if not keys then
    return nil
  end
  local kp, vp = ffi.cast(u32_ptr, keys), ffi.cast(task_ptr, leaves)
  -- the per-pid lists are reused from sample to sample (copy what you keep)
  local out, gen = self.ctx_cache, self.ctx_gen + 1
  self.ctx_gen = gen
  for i = 0, n - 1 do
    local v, pid = vp[i], kp[i]
    local c = out[pid]
    if not c then
      c = {}
      out[pid] = c
      self.ctx_n = self.ctx_n + 1
    end
    c[1], c[2], c[3], c[4], c[5] = tonumber(v.nvcsw), tonumber(v.nivcsw), tonumber(v.ins), v.running, gen
  end
  -- drop processes the kernel no longer tracks, once they add up
  if self.ctx_n > n + 64 then
    self.ctx_n = 0
    for pid, c in pairs(out) do
      if c[5] ~= gen then
        out[pid] = nil
      else
        self.ctx_n = self.ctx_n + 1
      end
    end
  end
  return out, gen
end

--- Records of the tree's event buffer that were dropped (buffer full).
function Tree:lost()
  return self.events and self.events:lost() or 0
end

function Tree:close()
  if self.bpf then
    self.bpf:close()
    self.bpf = nil
  end
end

--- The tree of a run's target, built with the run's features (a
--- denet.runner run): opts.target = { pids = {...} } (existing processes,
--- their descendants included), { tid = N } (one thread), { cmd = ... }
--- with opts.proc (a held command, tracked before it runs), or {} (every
--- thread of the machine but denet's own); opts.bpf (false: /proc polling,
--- for the monitor alone); opts.follow (default true); and new()'s
--- features, text, cflags, name, on_event and before_attach.
function M.for_run(opts)
  errors.check_opts("tree.for_run", opts, RUN_OPTS)
  local t = opts.target or {}
  local all = not (t.pids and #t.pids > 0) and not opts.proc and not t.tid
  local feats = {}
  for n, o in pairs(opts.features or {}) do
    feats[n] = o
  end
  feats.tree = { mode = t.tid and "tid" or all and "all" or "tree", tid = t.tid }
  local tree = M.new{ bpf = opts.bpf, features = feats, text = opts.text, cflags = opts.cflags, name = opts.name,
    follow = opts.follow, on_event = opts.on_event, before_attach = opts.before_attach }
  for _, pid in ipairs(t.pids or {}) do
    tree:add(pid, core.read_stat(pid), { root = true, descendants = true })
  end
  if opts.proc then
    tree:add(opts.proc.pid, core.ids().pid, { root = true })
  end
  if t.tid then
    tree:add_thread_mask(tonumber(t.tid))
  end
  return tree
end

--- A BPF-tracked tree for targets: opts.roots (existing process trees,
--- their descendants included), opts.proc (a held command, tracked before
--- it runs), opts.tid (one thread), or none of them: every thread of the
--- machine but denet's own. Takes new()'s features, text, cflags, name,
--- on_event and before_attach. Plugins build their own BPF C on it: their
--- probes filter with dn_wanted(tgid, tid), and exits leave the set.
function M.for_targets(opts)
  errors.check_opts("tree.for_targets", opts, TARGET_OPTS)
  return M.for_run{ bpf = true, target = { pids = opts.roots, tid = opts.tid }, proc = opts.proc,
    features = opts.features, text = opts.text, cflags = opts.cflags, name = opts.name, on_event = opts.on_event,
    before_attach = opts.before_attach }
end

--- The tracked tree of a plugin's target (the table on_start received:
--- pid, or pids; none: the whole machine), built with the plugin's own
--- BPF C: opts.text ({ name=, text= } items), opts.cflags, opts.name. Its
--- probes filter with dn_maybe_watched(tid) && dn_wanted(tgid, tid); the
--- kernel follows forks, exits leave the set, and descendants that
--- already exist (an attached -p target) are included.
function M.for_plugin(target, opts)
  errors.check_opts("tree.for_plugin", opts, PLUGIN_OPTS)
  opts = opts or {}
  local roots = {}
  for _, p in ipairs(target.pids or {}) do
    roots[#roots + 1] = p
  end
  if #roots == 0 and target.pid then
    roots[1] = target.pid
  end
  return M.for_targets{ roots = roots, tid = target.tid, text = opts.text, cflags = opts.cflags,
    name = opts.name }
end

return M
