-- denet.offcpu: where and why threads block. The kernel side
-- (bpf-src/offcpu.c) sums off-CPU time per (thread, user stack, kernel
-- stack, task state, syscall); this module turns the maps into a report:
-- categories, per-thread totals, call sites, a verdict, folded stacks and
-- an SVG flame graph. See docs/offcpu.md.
local bit = require("bit")
local ffi = require("ffi")
local core = require("denet.core")
local errors = require("denet.errors")
local syms = require("denet.syms")
local sysnames = require("denet.sysnames")
local tree_mod = require("denet.tree")

local M = {}

-- Task state letters for --state, as ps shows them; R is "preempted while
-- runnable" (the run queue).
local STATE_BITS = { R = 1, S = 2, D = 4, T = 8, t = 16 } -- 1, then state bit << 1

--- The -DDN_OFFCPU_STATES mask for letters like "D" or "SD"; nil, error.
function M.state_mask(letters)
  local mask = 0
  for c in letters:gmatch(".") do
    local b = STATE_BITS[c]
    if not b then
      return nil, string.format("unknown task state '%s' (use R, S, D, T or t)", c)
    end
    mask = bit.bor(mask, b)
  end
  return mask
end

---------------------------------------------------------------------------
-- categories

local SLEEP = { nanosleep = true, clock_nanosleep = true }
local LOCK = { futex = true, futex_waitv = true }
local POLL = { epoll_wait = true, epoll_pwait = true, epoll_pwait2 = true, poll = true, ppoll = true,
  select = true, pselect6 = true }
local SYNC = { fsync = true, fdatasync = true, sync = true, syncfs = true, sync_file_range = true, msync = true }

local function any_frame(frames, patterns)
  for _, f in ipairs(frames) do
    for _, p in ipairs(patterns) do
      if f:find(p) then
        return true
      end
    end
  end
  return false
end

local FAULT = { "^exc_page_fault", "^do_user_addr_fault", "^handle_mm_fault", "^filemap_fault" }
local PIPE = { "pipe_read", "pipe_write", "pipe_wait" } -- anon_pipe_read on newer kernels
local UNIX = { "^unix_stream_", "^unix_dgram_", "^unix_wait" }
local NET = { "^tcp_", "^inet_", "^sk_wait", "^sock_", "^udp_", "^__skb_wait" }
local IO = { "^io_schedule", "^blk_", "^folio_wait", "^wait_on_page", "^jbd2_", "^ext4_sync", "^filemap_write" }

--- The category of a block: runqueue, paging, sleep, lock, poll, io, ipc,
--- net or other (the rules are a table in docs/offcpu.md).
function M.category(state, syscall, kframes)
  if state == 0 then
    return "runqueue"
  end
  if syscall == nil and any_frame(kframes, FAULT) then
    return "paging"
  end
  if syscall and SLEEP[syscall] then
    return "sleep"
  end
  if syscall and LOCK[syscall] then
    return "lock"
  end
  if syscall and POLL[syscall] then
    return "poll"
  end
  if syscall and SYNC[syscall] then
    return "io"
  end
  if any_frame(kframes, PIPE) or any_frame(kframes, UNIX) then
    return "ipc"
  end
  if any_frame(kframes, NET) then
    return "net"
  end
  if any_frame(kframes, FAULT) then
    return "paging"
  end
  if bit.band(state, 2) ~= 0 or any_frame(kframes, IO) then
    return "io"
  end
  if any_frame(kframes, { "^futex_wait" }) then
    return "lock"
  end
  return "other"
end

local DESCRIBE = {
  sleep = "sleeping", lock = "waiting for a futex", io = "waiting for disk I/O", net = "waiting for the network",
  ipc = "waiting for a pipe or socket peer", poll = "waiting in poll/epoll", paging = "waiting for page faults",
  runqueue = "waiting for a CPU", other = "blocked",
}

---------------------------------------------------------------------------
-- kernel stack reuse (bpf-src/offcpu.c, DN_KSTACK_REUSE)

local KT_SLOTS, KT_INNER_WORDS, KT_OUTER_WORDS = 32, 256, 32

ffi.cdef([[
struct dn_kt_rec {
  int32_t syscall;
  uint16_t state, way;
  uint64_t uip;
  int32_t kstack;
  uint32_t ok;
  uint64_t sp, top;
  uint64_t inner[256];
  uint64_t outer[32];
};
]])

--- The template of a walked kernel stack (see bpf-src/offcpu.c): where
--- each address of the stack (ips, leaf first as the stack map gives
--- them) was found in rec's copies of the stack, each above the one
--- before. Slots in the top part (the syscall entry's frames) are words
--- from top - KT_OUTER_WORDS * 8, the others words from the tracepoint's
--- sp. The first `skip` addresses are not looked for: the frames of the
--- machinery that ran the program, below the anchor, the same at every
--- run. nil when a frame is not in the copies or there are too many.
function M.kt_template(rec, ips, skip)
  skip = skip or 0
  local n = #ips - skip
  if rec.ok == 0 or n < 1 or n > KT_SLOTS then
    return nil
  end
  local sp, outer0 = rec.sp, rec.top - KT_OUTER_WORDS * 8
  local t = { kstack = rec.kstack, n = n, outer = 0, span = 0, word = {}, val = {} }
  local at = sp -- search from here up
  for i = 1, n do
    local want, found = ips[i + skip], nil
    local j = tonumber(at - sp) / 8
    while j < KT_INNER_WORDS and sp + j * 8 < outer0 do
      if rec.inner[j] == want then
        found = j
        break
      end
      j = j + 1
    end
    if found then
      at = sp + found * 8 + 8
      t.span = found + 1
    else
      j = at > outer0 and tonumber(at - outer0) / 8 or 0
      while j < KT_OUTER_WORDS do
        if rec.outer[j] == want then
          found = j
          break
        end
        j = j + 1
      end
      if not found then
        return nil
      end
      t.outer = bit.bor(t.outer, bit.lshift(1, i - 1))
      at = outer0 + found * 8 + 8
    end
    t.word[i - 1], t.val[i - 1] = found, want
  end
  return t
end

-- Learn templates from the walks the program reports.
local function kt_learner(bpf, raw)
  local stacks = bpf:get_table("dn_offcpu_stacks")
  local kt = bpf:get_table("dn_kt")
  return function(rec)
    local ips = stacks:stack_walk(rec.kstack)
    -- a raw tracepoint's walk begins below its anchor: the program is
    -- called from bpf_trace_runN, whose frame holds the argument array,
    -- so at least the return address into it is below (a stale copy of
    -- it above must not become a slot). The fewest such frames from one
    -- that leave a template (no symbol names needed: reading them would
    -- hold up the learning at the start)
    local t
    for skip = raw and 1 or 0, raw and 3 or 0 do
      t = M.kt_template(rec, ips, skip)
      if t then
        break
      end
    end
    if not t then
      return
    end
    local v = kt.leaf.ct()
    v.kstack, v.n, v.confirmed, v.outer, v.span = t.kstack, t.n, 0, t.outer, t.span
    for i = 0, t.n - 1 do
      v.word[i], v.val[i] = t.word[i], t.val[i]
    end
    kt:set({ syscall = rec.syscall, state = rec.state, way = rec.way, uip = rec.uip }, v)
  end
end

--- Learn kernel stack templates for a program built with
--- -DDN_KSTACK_REUSE (from the loop, as walks are reported); returns the
--- ring buffer.
function M.learn_kstacks(bpf, raw)
  return bpf:get_table("dn_kt_learn"):open_ring_buffer(kt_learner(bpf, raw), { type = "struct dn_kt_rec" })
end

--- Counters of kernel stack reuse: reused, walked, wrong (reuses a walk
--- disagreed with; counted in verify mode only), unconfirmed.
function M.kt_stats(bpf)
  local t = bpf:get_table("dn_kt_stats")
  return { reused = tonumber(t:sum(0)), walked = tonumber(t:sum(1)), wrong = tonumber(t:sum(2)),
    unconfirmed = tonumber(t:sum(3)) }
end

---------------------------------------------------------------------------
-- frames the frame pointer walk loses (bpf-src/offcpu.c, DN_LEAF_UNWIND)

ffi.cdef([[
struct dn_leaf_ask_rec {
  uint32_t tgid, is_return;
  uint64_t ip, sp;
  uint32_t tid, pad;
};
]])

local LEAF_FRAMES = 3

-- A word of process pid's memory at addr, or nil.
local function read_word(pid, addr)
  local f = io.open("/proc/" .. pid .. "/mem", "rb")
  if not f then
    return nil
  end
  local ok = f:seek("set", addr)
  local bytes = ok and f:read(8)
  f:close()
  if not bytes or #bytes ~= 8 then
    return nil
  end
  return tonumber(ffi.cast("const uint64_t *", bytes)[0])
end

--- Answer the program's requests for unwind rules (from the loop): each
--- IP of a traced process it met without a rule gets the rule its file's
--- call frame information gives, or "stop". While the thread that asked
--- is still blocked, its stack is read on from there, and the frames
--- above get their rules too, so the next block at that place is whole.
--- Returns the ring buffer.
function M.learn_leaf_rules(bpf)
  local rules = bpf:get_table("dn_leaf_rules")
  local function learn(tgid, ip, is_return)
    local kind, cfa, ra = syms.frame_rule(tgid, ip, is_return == 1)
    local v = rules.leaf.ct()
    if kind == "unwind" then
      v.cfa, v.ra, v.unwind = cfa, ra, 1
    end
    rules:set({ tgid = tgid, is_return = is_return, ip = ip }, v)
    return kind, cfa, ra
  end
  return bpf:get_table("dn_leaf_ask"):open_ring_buffer(function(rec)
    local tgid, is_return, ip, sp = rec.tgid, rec.is_return, tonumber(rec.ip), tonumber(rec.sp)
    for level = is_return, LEAF_FRAMES - 1 do
      local kind, cfa, ra = learn(tgid, ip, level > 0 and 1 or 0)
      if kind ~= "unwind" then
        return
      end
      local next_ip = read_word(rec.tid, sp + cfa + ra)
      if not next_ip or next_ip == 0 then
        return
      end
      local known = rules:get({ tgid = tgid, is_return = 1, ip = next_ip })
      if known and known.pending == 0 then
        return
      end
      ip, sp = next_ip, sp + cfa
    end
  end, { type = "struct dn_leaf_ask_rec" })
end

---------------------------------------------------------------------------
-- user stack reuse (bpf-src/offcpu.c, DN_USTACK_REUSE)

local UT_FRAMES = 8

ffi.cdef([[
struct dn_ut_rec {
  uint32_t tgid, pad;
  uint64_t ip, sp, bp;
  int32_t ustack;
  uint32_t n;
  uint64_t end;
  uint64_t fp[8], next[8], ret[8];
  uint32_t nleaf, leaf_ok;
  uint64_t leaf_at[3], leaf_val[3];
};
]])

--- Is what a walk read (rec) the stack the kernel stored (ips, leaf
--- first)? The IP, then each frame's return address, and no more.
function M.ut_consistent(rec, ips)
  local n = rec.n
  if n > UT_FRAMES or #ips ~= n + 1 or ips[1] ~= rec.ip then
    return false
  end
  for i = 0, n - 1 do
    if ips[i + 2] ~= rec.ret[i] then
      return false
    end
  end
  return true
end

--- Make user stack templates for a program built with -DDN_USTACK_REUSE
--- (from the loop, as walks are reported); returns the ring buffer.
function M.learn_ustacks(bpf)
  local stacks = bpf:get_table("dn_offcpu_stacks")
  local ut = bpf:get_table("dn_ut")
  return bpf:get_table("dn_ut_learn"):open_ring_buffer(function(rec)
    if not M.ut_consistent(rec, stacks:stack_walk(rec.ustack)) then
      return
    end
    local v = ut.leaf.ct()
    v.ustack, v.n, v["end"] = rec.ustack, rec.n, rec["end"]
    for i = 0, rec.n - 1 do
      v.fp[i], v.next[i], v.ret[i] = rec.fp[i], rec.next[i], rec.ret[i]
    end
    -- the frames the walk lost, and where they were read (when final)
    v.nleaf, v.leaf_ok = rec.nleaf, rec.leaf_ok
    for i = 0, 2 do
      v.leaf_at[i], v.leaf_val[i] = rec.leaf_at[i], rec.leaf_val[i]
    end
    ut:set({ tgid = rec.tgid, ip = rec.ip, sp = rec.sp, bp = rec.bp }, v)
  end, { type = "struct dn_ut_rec" })
end

--- Counters of user stack reuse: reused, walked, wrong (reuses a walk
--- disagreed with; counted in verify mode only).
function M.ut_stats(bpf)
  local t = bpf:get_table("dn_ut_stats")
  return { reused = tonumber(t:sum(0)), walked = tonumber(t:sum(1)), wrong = tonumber(t:sum(2)) }
end

-- the user stack id of a kernel thread, which has none (not a miss)
M.STACK_NONE = -1000
-- the stack id of a block that began before tracing: its stacks were read
-- by denet.snapshot when tracing began
M.STACK_SNAPSHOT = -2000

-- why stacks were not read, in the order the report names them
M.LOST_WHY = {
  { "map_full", "because the stack map was full (raise --stack-storage)" },
  { "collided", "because another stack held their slot of the stack map (raise --stack-storage)" },
  { "fault", "because the walk faulted (user memory paged out, or a frame pointer chain broken)" },
  { "other", "for other reasons" },
}

---------------------------------------------------------------------------
-- tracing

local Tracer = {}
Tracer.__index = Tracer

local START_OPTS = { "roots", "tid", "min_us", "max_us", "states", "user_only", "kernel_only", "stack_storage",
  "stack_reuse", "stack_depth", "proc", "on_process", "threads", "kernel_threads" }
local RUN_OPTS = { "cmd", "duration", "host", "on_tick", "tick" }
for _, k in ipairs(START_OPTS) do
  RUN_OPTS[#RUN_OPTS + 1] = k
end

--- Start off-CPU tracing. opts: roots = {pid,...} (their trees; empty:
--- every process), tid (one thread), min_us, max_us, states (mask),
--- user_only, kernel_only, stack_storage, proc (a held denet.spawn process
--- to track before it runs), on_process(ev) (fork/exec/exit of tracked
--- processes). Returns the tracer; tracer:report() reads it.
function M.start(opts)
  errors.check_opts("offcpu.start", opts, START_OPTS)
  local cflags = {}
  if opts.min_us then
    cflags[#cflags + 1] = string.format("-DDN_OFFCPU_MIN_NS=%dULL", math.floor(opts.min_us * 1000))
  end
  if opts.max_us then
    cflags[#cflags + 1] = string.format("-DDN_OFFCPU_MAX_NS=%dULL", math.floor(opts.max_us * 1000))
  end
  if opts.states then
    cflags[#cflags + 1] = string.format("-DDN_OFFCPU_STATES=%dULL", opts.states)
  end
  if opts.user_only then
    cflags[#cflags + 1] = "-DDN_NO_KSTACK"
  end
  if opts.kernel_only then
    cflags[#cflags + 1] = "-DDN_NO_USTACK"
  end
  if opts.stack_storage then
    cflags[#cflags + 1] = "-DDN_STACK_STORAGE=" .. tonumber(opts.stack_storage)
  end
  -- threads = "user" or "kernel": only those (told apart in the kernel by
  -- task_struct.flags, whose place comes from the kernel's BTF)
  if opts.threads then
    if not require("denet.features").has("btf") then
      errors.raise("user and kernel threads cannot be told apart on this kernel (no BTF)")
    end
    cflags[#cflags + 1] = opts.threads == "user" and "-DDN_THREADS_USER" or "-DDN_THREADS_KERNEL"
  end
  if not opts.kernel_only then
    cflags[#cflags + 1] = "-DDN_LEAF_UNWIND"
  end
  -- off-CPU analysis alone reads the syscall from the registers saved at
  -- kernel entry: no program runs per syscall
  cflags[#cflags + 1] = "-DDN_INSYS_REGS"
  local reuse = opts.stack_reuse ~= "off" and not opts.user_only
  if reuse then
    cflags[#cflags + 1] = "-DDN_KSTACK_REUSE"
    if opts.stack_reuse == "verify" then
      cflags[#cflags + 1] = "-DDN_KSTACK_VERIFY"
    end
  end
  if opts.stack_reuse ~= "off" and not opts.kernel_only then
    cflags[#cflags + 1] = "-DDN_USTACK_REUSE"
    local min_addr = tonumber((core.read_file("/proc/sys/vm/mmap_min_addr") or ""):match("%d+"))
    if min_addr then
      cflags[#cflags + 1] = string.format("-DDN_MMAP_MIN_ADDR=%dULL", min_addr)
    end
    if opts.stack_reuse == "verify" then
      cflags[#cflags + 1] = "-DDN_USTACK_VERIFY"
    end
  end
  if not opts.proc then
    require("denet.snapshot").prepare()
  end
  local self = setmetatable({ opts = opts, t0 = core.monotonic(), t0_ns = core.monotonic_ns(), captured = {} },
    Tracer)
  self.tree = tree_mod.for_targets{
    parts = { "offcpu" },
    cflags = cflags,
    name = "offcpu",
    roots = opts.roots,
    proc = opts.proc,
    tid = opts.tid,
    on_event = function(ev)
      if ev.kind == "exec" or ev.kind == "fork" then
        self.recapture = true
      end
      if opts.on_process then
        opts.on_process(ev)
      end
    end,
    -- the window begins as the probes go live: no block the program
    -- records starts before it (a preemption of denet between here and
    -- the end of start() cannot stretch a block past the window)
    before_attach = function()
      self:mark_start()
    end,
  }
  self.bpf = self.tree.bpf
  -- threads blocked since before the window are accounted from its start
  -- (a held command has none), read as soon as the targets are known, so
  -- few wake unseen in between
  if not opts.proc then
    self:seed_blocked()
  end
  -- the kernel may lack what stack reuse needs (the composer said so)
  self.reuse = self.tree.program:has_flag("-DDN_KSTACK_REUSE")
  if self.reuse then
    self.kt_buf = M.learn_kstacks(self.bpf, self.tree.program:has_flag("-DDN_SWITCH_RAW"))
  end
  if self.tree.program:has_flag("-DDN_LEAF_UNWIND") then
    self.leaf_buf = M.learn_leaf_rules(self.bpf)
  end
  if self.tree.program:has_flag("-DDN_USTACK_REUSE") then
    self.ut_buf = M.learn_ustacks(self.bpf)
  end
  return self
end

local BPF_NOEXIST = 1

--- Threads of the targets that are blocked as tracing begins never switch
--- out inside the window: enter each into the program's thread table
--- (bpf: a program with offcpu.c) as blocked since t0_ns, when the window
--- began (how long before is kept too), with its stacks read now
--- (denet.snapshot). pids: the tracked processes (nil: every one but
--- denet); opts: tid, threads, states as for start(), and stacks = false
--- when no report will show the stacks (they are not read then). Returns
--- preblocked (tid -> the snapshot's thread) and runtime0 (tid -> { pid,
--- comm, ns: its CPU time now, kernel }), the base of on-CPU times.
function M.seed_blocked(bpf, pids, opts, t0_ns)
  local snapshot = require("denet.snapshot")
  local preblocked, runtime0 = {}, {}
  if pids and #pids == 0 then
    return preblocked, runtime0
  end
  local self_pid = core.ids().pid
  local list = snapshot.take(pids, self_pid, { stacks = opts.stacks })
  local tab = bpf:get_table("dn_offcpu_threads")
  for _, t in ipairs(list) do
    local kept = (not opts.tid or t.tid == opts.tid) and t.pid ~= self_pid
      and not (opts.threads == "user" and t.kernel) and not (opts.threads == "kernel" and not t.kernel)
    if kept then
      runtime0[t.tid] = { pid = t.pid, comm = t.comm, ns = t.runtime_ns, kernel = t.kernel }
      local st = snapshot.trace_state(t.state_word)
      local bitpos = st ~= 0 and bit.lshift(st, 1) or 1
      if t.state ~= "R" and st ~= 0 and t.since_ns and (not opts.states or bit.band(opts.states, bitpos) ~= 0) then
        local v = tab.leaf.ct()
        -- (one that blocked after t0_ns, before the program watched it,
        -- counts from when it blocked)
        t.seeded_ns = math.floor(math.max(t0_ns, t.since_ns))
        v.tgid, v.start, v.before, v.state, v.syscall = t.pid, t.seeded_ns, math.max(0, t0_ns - t.since_ns), st,
          t.syscall
        -- its CPU time at the block's start, should the switch that ends
        -- it not be seen
        v.runtime = t.runtime_ns or 0
        v.kstack = M.STACK_SNAPSHOT
        v.ustack = t.kernel and M.STACK_NONE or M.STACK_SNAPSHOT
        ffi.copy(v.comm, t.comm, math.min(#t.comm, 15))
        -- a thread the program already saw switch out is its own
        if pcall(tab.set, tab, t.tid, v, BPF_NOEXIST) then
          preblocked[t.tid] = t
        end
      end
    end
  end
  if next(preblocked) == nil then
    return preblocked, runtime0
  end
  -- a thread that woke between the snapshot and the table entry is not
  -- blocked since then: look again, and take back those entries
  local now = {}
  for _, t in ipairs(snapshot.take(pids, self_pid, { stacks = false })) do
    now[t.tid] = t
  end
  for tid, t in pairs(preblocked) do
    local again = now[tid]
    -- (one woken but not yet on a CPU has the same exec_start: its block
    -- goes on until the program sees it switch in)
    if not again or again.exec_start ~= t.exec_start then
      local v = tab:get(tid)
      if v and v.kstack == M.STACK_SNAPSHOT and tonumber(v.start) == t.seeded_ns then
        tab:delete(tid)
      end
      preblocked[tid] = nil
    end
  end
  return preblocked, runtime0
end

--- Account the threads blocked as tracing begins (M.seed_blocked) for
--- this tracer's targets.
function Tracer:seed_blocked()
  local opts, pids = self.opts, nil
  if opts.tid then
    local status = core.read_file(string.format("/proc/%d/status", opts.tid)) or ""
    pids = { tonumber(status:match("Tgid:%s*(%d+)")) }
  elseif opts.roots and #opts.roots > 0 then
    pids = {}
    for pid in pairs(self.tree.live) do
      pids[#pids + 1] = pid
    end
  end
  self.preblocked, self.runtime0 = M.seed_blocked(self.bpf, pids, opts, self.t0_ns)
end

--- Tracing starts now (wall times of threads already running count from
--- here): called at the end of start(), and again when a held command is
--- resumed.
function Tracer:mark_start()
  self.t0, self.t0_ns = core.monotonic(), core.monotonic_ns()
end

--- Keep symbols of the traced processes resolvable after they exit:
--- capture their mappings now (call at intervals and after exec).
function Tracer:capture()
  for pid in pairs(self.tree.live) do
    if syms.capture(pid) then
      self.captured[pid] = true
    end
  end
  self.recapture = false
end

-- libc and the loader are not call sites
local RUNTIME = { "^libc%.so", "^ld%-linux", "^libpthread", "^libstdc%+%+", "^libgcc_s" }

local function is_runtime_module(module)
  if not module then
    return true
  end
  local base = module:match("([^/]+)$") or module
  for _, p in ipairs(RUNTIME) do
    if base:find(p) then
      return true
    end
  end
  return false
end

-- The last n items of list (the frames nearest the block), or list.
local function keep_last(list, n)
  if not n or #list <= n then
    return list
  end
  local cut = {}
  for i = #list - n + 1, #list do
    cut[#cut + 1] = list[i]
  end
  return cut
end

-- Frames root first, and for each whether it is in the program itself
-- (not libc or the loader), for naming call sites. leaf: the frames the
-- walk lost below the first (DN_LEAF_UNWIND), spliced in after it.
local function user_frames(pid, addrs, depth, leaf)
  if leaf and leaf[1] and #addrs > 0 then
    local all = { addrs[1] }
    for _, a in ipairs(leaf) do
      all[#all + 1] = a
    end
    for i = 2, #addrs do
      all[#all + 1] = addrs[i]
    end
    addrs = all
  end
  local out, mods = {}, {}
  for i = #addrs, 1, -1 do -- root first
    out[#out + 1] = syms.usym(pid, addrs[i])
    local _, _, module = syms.resolve(pid, addrs[i])
    mods[#out] = not is_runtime_module(module)
  end
  return keep_last(out, depth), keep_last(mods, depth)
end

local function kernel_frames(addrs, depth)
  local names, out = syms.kernel_frames(addrs), {}
  for i = #names, 1, -1 do
    out[#out + 1] = names[i]
  end
  return keep_last(out, depth)
end

-- The kernel frames denet.snapshot read of a thread, root first: from
-- addresses, or /proc's names.
local function snapshot_kernel_frames(t, depth)
  if t.kaddrs then
    return kernel_frames(t.kaddrs, depth)
  end
  local out = {}
  for i = #(t.knames or {}), 1, -1 do
    out[#out + 1] = t.knames[i]
  end
  return keep_last(out, depth)
end

-- One stack: user frames root first, "-", kernel frames to the leaf.
local function join_frames(uf, kf)
  local frames = {}
  for _, f in ipairs(uf) do
    frames[#frames + 1] = f
  end
  if #uf > 0 and #kf > 0 then
    frames[#frames + 1] = "-"
  end
  for _, f in ipairs(kf) do
    frames[#frames + 1] = f
  end
  return frames
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

--- Read the kernel maps into the report (the JSON contract of
--- docs/offcpu.md). duration_us: how long tracing ran.
function Tracer:report()
  local depth = self.opts.stack_depth
  local stacks_t = self.bpf:get_table("dn_offcpu_stacks")
  local ucache, kcache, umods = {}, {}, {}
  local stacks, threads, by_sys, merged = {}, {}, {}, {}
  local comms = {}

  -- once stopped (Tracer:stop), the maps hold still: everything counts
  -- up to then. Live, a block that ends between the reads of the two
  -- maps below is in neither.
  local now_ns = self.stopped_ns or core.monotonic_ns()
  local bpf_threads = {}
  for tid, v in self.bpf:get_table("dn_offcpu_threads"):items() do
    bpf_threads[tid] = v
    comms[tid] = ffi.string(v.comm)
    -- wall: from its start (or when tracing began) to its end (or now)
    local born = math.max(tonumber(v.born), self.t0_ns)
    local died = tonumber(v.died) > 0 and tonumber(v.died) or now_ns
    threads[tid] = {
      pid = v.tgid, tid = tid, comm = ffi.string(v.comm),
      wall_us = math.max(0, died - born) / 1000, offcpu_us = 0, by_category = {},
    }
  end
  -- threads that neither blocked nor were preempted (on a CPU all along)
  for tid, base in pairs(self.runtime0 or {}) do
    local runtime = not threads[tid] and base.ns
      and tonumber((core.read_file(string.format("/proc/%d/task/%d/schedstat", base.pid, tid)) or ""):match("^(%d+)"))
    if runtime and runtime > base.ns then
      threads[tid] = { pid = base.pid, tid = tid, comm = base.comm, wall_us = (now_ns - self.t0_ns) / 1000,
        offcpu_us = 0, by_category = {}, kernel = base.kernel or nil }
    end
  end
  -- names from /proc for threads still alive (a thread renamed after its
  -- last switch shows its newer name); on-CPU time is the kernel's count
  -- of the thread's CPU time (now, or at its last switch once it exited)
  -- less what it was when tracing began
  for tid, t in pairs(threads) do
    local dir = string.format("/proc/%d/task/%d/", t.pid, tid)
    local c = core.read_file(dir .. "comm")
    if c and c ~= "" then
      t.comm = c:gsub("\n$", "")
    end
    local v = bpf_threads[tid]
    local alive = not v or tonumber(v.died) == 0
    local runtime = alive and tonumber((core.read_file(dir .. "schedstat") or ""):match("^(%d+)"))
    if not runtime and v and tonumber(v.runtime) > 0 then
      runtime = tonumber(v.runtime)
    end
    -- the base: when tracing began, or 0 for a thread born since
    local base = self.runtime0 and self.runtime0[tid] and self.runtime0[tid].ns
    if not base and (self.opts.proc or (v and tonumber(v.born) > 0)) then
      base = 0
    end
    if runtime and base then
      t.measured_oncpu_us = math.max(0, runtime - base) / 1000
    end
  end

  -- blocks that ended, and those still in progress now (counted up to now)
  local entries, by_key = {}, {}
  -- the frames the walk lost (zeros when none, or without DN_LEAF_UNWIND)
  local function leaf_of(k)
    local out = {}
    for i = 0, 2 do
      local a = tonumber(k.leaf[i])
      if a == 0 then
        break
      end
      out[#out + 1] = a
    end
    return out
  end
  local function ekey(k)
    return table.concat({ k.tgid, k.tid, k.ustack, k.kstack, k.state, k.syscall, table.concat(k.leaf, ",") }, ":")
  end
  for key, v in self.bpf:get_table("dn_offcpu"):items() do
    local k = { tgid = key.tgid, tid = key.tid, ustack = key.ustack, kstack = key.kstack, state = key.state,
      syscall = key.syscall, leaf = leaf_of(key) }
    entries[#entries + 1] = { k = k, total_ns = tonumber(v.total_ns), count = tonumber(v.count),
      max_ns = tonumber(v.max_ns) }
    by_key[ekey(k)] = entries[#entries]
  end
  local min_ns, max_ns = (self.opts.min_us or 0) * 1000, (self.opts.max_us or math.huge) * 1000
  for tid, st in self.bpf:get_table("dn_offcpu_threads"):items() do
    local start = tonumber(st.start)
    local d = now_ns - start
    -- a block that began before tracing: its whole length for the filters
    local whole = d + tonumber(st.before)
    if start > 0 and tonumber(st.died) == 0 and whole >= min_ns and whole <= max_ns then
      local k = { tgid = st.tgid, tid = tid, ustack = st.ustack, kstack = st.kstack, state = st.state,
        syscall = st.syscall, leaf = leaf_of(st) }
      local e = by_key[ekey(k)]
      if e then
        -- the same place as blocks that ended: one stack
        e.total_ns, e.count, e.max_ns = e.total_ns + d, e.count + 1, math.max(e.max_ns, whole)
      else
        entries[#entries + 1] = { k = k, total_ns = d, count = 1, max_ns = whole }
      end
    end
  end
  for _, e in ipairs(entries) do
    local k, v = e.k, e
    local tgid, tid = k.tgid, k.tid
    local ukey, kkey = tgid .. ":" .. k.ustack .. ":" .. table.concat(k.leaf, ","), k.kstack
    local snap = (k.ustack == M.STACK_SNAPSHOT or k.kstack == M.STACK_SNAPSHOT) and self.preblocked
      and self.preblocked[tid]
    if snap then
      -- blocked since before tracing began: the stacks read then
      ukey, kkey = "snapshot:" .. tid, "snapshot:" .. tid
    end
    local uf = ucache[ukey]
    if not uf then
      if snap and k.ustack == M.STACK_SNAPSHOT and not self.opts.kernel_only then
        uf, umods[ukey] = user_frames(tgid, snap.uaddrs or {}, depth, snap.uleaf)
      elseif k.ustack >= 0 then
        uf, umods[ukey] = user_frames(tgid, stacks_t:stack_walk(k.ustack), depth, k.leaf)
      elseif self.opts.kernel_only or k.ustack == M.STACK_NONE then
        uf = {}
      else
        uf = { "[Missed User Stack]" }
      end
      ucache[ukey] = uf
    end
    local kf = kcache[kkey]
    if not kf then
      if snap and not self.opts.user_only then
        kf = snapshot_kernel_frames(snap, depth)
      elseif k.kstack >= 0 then
        kf = kernel_frames(stacks_t:stack_walk(k.kstack), depth)
      elseif self.opts.user_only then
        kf = {}
      else
        kf = { "[Missed Kernel Stack]" }
      end
      kcache[kkey] = kf
    end
    local sysname = k.syscall >= 0 and sysnames.name(k.syscall) or nil
    local cat = M.category(k.state, sysname, kf)
    local us = v.total_ns / 1000
    local t = threads[tid]
    if not t then
      t = { pid = tgid, tid = tid, comm = comms[tid] or "?", wall_us = 0, offcpu_us = 0, by_category = {} }
      threads[tid] = t
    end
    if cat ~= "runqueue" then
      t.offcpu_us = t.offcpu_us + us
    end
    t.by_category[cat] = (t.by_category[cat] or 0) + us
    if k.ustack == M.STACK_NONE then
      t.kernel = true -- a kernel thread (it has no user stack)
    end
    local frames = join_frames(uf, kf)
    -- two kernel stack ids can name the same frames (one taken while
    -- another tracer's frame sat at the leaf): one entry
    local mkey = table.concat({ tid, cat, sysname or "", table.concat(frames, ";") }, "\0")
    local same = merged[mkey]
    if same then
      same.us, same.count = same.us + us, same.count + v.count
      same.max_us = math.max(same.max_us, v.max_ns / 1000)
    else
      stacks[#stacks + 1] = {
        pid = tgid, tid = tid, comm = t.comm, category = cat, syscall = sysname or "", us = us,
        count = v.count, max_us = v.max_ns / 1000, frames = frames, user = uf,
        user_mods = umods[ukey],
      }
      merged[mkey] = stacks[#stacks]
    end
    -- the syscall table counts blocks; waits for a CPU after a preemption
    -- inside a syscall (frequent on PREEMPT_RT) are not blocks
    if sysname and cat ~= "runqueue" then
      local s = by_sys[sysname] or { name = sysname, blocks = 0, us = 0, max_us = 0 }
      s.blocks = s.blocks + v.count
      s.us = s.us + us
      s.max_us = math.max(s.max_us, v.max_ns / 1000)
      by_sys[sysname] = s
    end
  end

  local duration_us = (now_ns - self.t0_ns) / 1000
  local tlist = {}
  for _, t in pairs(threads) do
    t.wall_us = math.max(t.wall_us, t.offcpu_us + (t.by_category.runqueue or 0))
    if t.measured_oncpu_us then
      t.oncpu_us = math.min(t.measured_oncpu_us, t.wall_us)
      t.oncpu_measured = true
    else
      -- without the kernel's count: the wall time it was neither blocked
      -- nor waiting for a CPU
      t.oncpu_us = math.max(0, t.wall_us - t.offcpu_us - (t.by_category.runqueue or 0))
      t.oncpu_measured = false
    end
    t.measured_oncpu_us = nil
    t.share = t.wall_us > 0 and t.offcpu_us / t.wall_us or 0
    -- a thread with no block to tell it by (one born while tracing) is
    -- shown only where its kind is known to be asked for
    local wrong_kind = (self.opts.threads == "kernel" and not t.kernel)
      or (self.opts.threads == "user" and t.kernel)
    if t.wall_us > 0 and not wrong_kind then
      tlist[#tlist + 1] = t
    end
  end
  table.sort(tlist, function(a, b)
    return a.offcpu_us > b.offcpu_us
  end)
  table.sort(stacks, function(a, b)
    return a.us > b.us
  end)
  local sys = {}
  for _, s in pairs(by_sys) do
    sys[#sys + 1] = s
  end
  table.sort(sys, function(a, b)
    return a.us > b.us
  end)
  local missed = self.bpf:get_table("dn_offcpu_missed")
  local why = { collided = 0, map_full = 0, fault = 0, other = 0 }
  local names = { [0] = "collided", "map_full", "fault", "other" }
  local lost = 0
  for i = 0, 7 do
    local n = tonumber(missed:get(i))
    why[names[i % 4]] = why[names[i % 4]] + n
    lost = lost + n
  end
  local report = {
    kind = "offcpu",
    duration_us = math.floor(duration_us),
    threads = tlist,
    stacks = stacks,
    syscalls = sys,
    lost_stacks = lost,
    lost_stacks_why = why,
    -- switches the kernel did not run the program for (another BPF
    -- program or a map operation held that CPU): their blocks are missing
    missed_switches = self.bpf.m:misses(self.tree.program:has_flag("-DDN_SWITCH_RAW")
      and "raw_tracepoint__sched_switch" or "tracepoint__sched__sched_switch") or 0,
    -- blocks that ended while tracing, and those of them whose entry could
    -- not be stored (the map full or busy): missing from the totals
    blocks_seen = tonumber(self.bpf:get_table("dn_offcpu_seen"):sum(0)),
    lost_blocks = tonumber(self.bpf:get_table("dn_offcpu_seen"):sum(1)),
    -- blocks whose ending switch was not seen: their end found from the
    -- thread's CPU time (counted), or not (missing)
    recovered_blocks = tonumber(self.bpf:get_table("dn_offcpu_seen"):sum(3)),
    unended_blocks = tonumber(self.bpf:get_table("dn_offcpu_seen"):sum(2)),
  }
  if self.kt_buf then
    report.kstack_reuse = M.kt_stats(self.bpf)
  end
  if self.ut_buf then
    report.ustack_reuse = M.ut_stats(self.bpf)
  end
  report.sites = M.sites(stacks)
  report.verdict = M.verdict(report, self.opts.kernel_threads)
  return report
end

--- The call site of a stack: the nearest frames of the program itself
--- above the blocking call ("queue_pop() <- worker_loop()").
function M.site(stack)
  local out = {}
  local mods = stack.user_mods or {}
  for i = #stack.user, 1, -1 do
    local f = stack.user[i]
    if mods[i] and not f:match("^%[") and not f:match("%+0x") then
      out[#out + 1] = f .. "()"
      if #out == 2 then
        break
      end
    end
  end
  return #out > 0 and table.concat(out, " <- ") or nil
end

--- Off-CPU time per (thread, category, call site), largest first.
function M.sites(stacks)
  local acc, list = {}, {}
  for _, s in ipairs(stacks) do
    if s.category ~= "runqueue" then
      local site = M.site(s) or (s.syscall ~= "" and s.syscall .. "()") or "?"
      local key = s.tid .. "|" .. s.category .. "|" .. site
      local e = acc[key]
      if not e then
        e = { tid = s.tid, comm = s.comm, category = s.category, site = site, us = 0, count = 0 }
        acc[key] = e
        list[#list + 1] = e
      end
      e.us = e.us + s.us
      e.count = e.count + s.count
    end
  end
  table.sort(list, function(a, b)
    return a.us > b.us
  end)
  return list
end

--- One plain sentence about the thread that waits the most.
--- Kernel threads (their idle waits fill a machine) are left out unless
--- kernel_threads.
function M.verdict(report, kernel_threads)
  local t
  for _, th in ipairs(report.threads) do
    if kernel_threads or not th.kernel then
      t = th
      break
    end
  end
  if not t or t.offcpu_us <= 0 then
    return "no thread was seen blocking"
  end
  local cat, best = "other", -1
  for c, us in pairs(t.by_category) do
    if c ~= "runqueue" and us > best then
      cat, best = c, us
    end
  end
  local where = ""
  for _, s in ipairs(report.sites) do
    if s.tid == t.tid and s.category == cat then
      where = " in " .. s.site
      break
    end
  end
  return string.format("%s (tid %d) spends %d%% of its wall time %s%s", t.comm, t.tid,
    math.floor(100 * best / t.wall_us + 0.5), DESCRIBE[cat] or cat, where)
end

---------------------------------------------------------------------------
-- blocked now (--now)

local NOW_OPTS = { "roots", "tid", "threads", "kernel_threads", "stack_depth", "states" }

--- Where every thread of the targets is blocked right now and for how
--- long, read without stopping anything (denet.snapshot). opts: roots
--- ({pid,...}, their trees; none: every process but denet), tid, threads
--- ("user" or "kernel": only those), kernel_threads (a kernel thread may
--- be the verdict's), stack_depth, states (a state_mask). Returns the
--- report (docs/offcpu.md, "Blocked now").
function M.now(opts)
  errors.check_opts("offcpu.now", opts, NOW_OPTS)
  local snapshot = require("denet.snapshot")
  local pids
  if opts.tid then
    local status = core.read_file(string.format("/proc/%d/status", opts.tid))
    if not status then
      errors.raise(string.format("no thread %d", opts.tid))
    end
    pids = { tonumber(status:match("Tgid:%s*(%d+)")) }
  elseif opts.roots and #opts.roots > 0 then
    pids = {}
    for _, root in ipairs(opts.roots) do
      if not core.read_file(string.format("/proc/%d/stat", root)) then
        errors.raise(string.format("no process %d", root))
      end
      pids[#pids + 1] = root
      for _, d in ipairs(require("denet.procfs").descendants(root)) do
        pids[#pids + 1] = d
      end
    end
  end
  local self_pid = core.ids().pid
  local taken_ns = core.monotonic_ns()
  local list = snapshot.take(pids, self_pid)
  local threads = {}
  for _, t in ipairs(list) do
    local st = snapshot.trace_state(t.state_word)
    local bitpos = st ~= 0 and bit.lshift(st, 1) or 1
    local kept = (not opts.tid or t.tid == opts.tid) and not (opts.threads == "user" and t.kernel)
      and not (opts.threads == "kernel" and not t.kernel) and (not opts.states or bit.band(opts.states, bitpos) ~= 0)
    if kept then
      local r = { pid = t.pid, tid = t.tid, comm = t.comm, state = t.state, kernel = t.kernel or nil,
        cpu_time_us = t.runtime_ns and t.runtime_ns / 1000 }
      if t.state ~= "R" then
        local uf, mods = {}, nil
        if t.uaddrs and #t.uaddrs > 0 then
          uf, mods = user_frames(t.pid, t.uaddrs, opts.stack_depth, t.uleaf)
        end
        local kf = snapshot_kernel_frames(t, opts.stack_depth)
        local sysname = t.syscall >= 0 and sysnames.name(t.syscall) or nil
        r.syscall = sysname or ""
        r.category = M.category(st, sysname, kf)
        r.blocked_for_us = t.since_ns and math.max(0, taken_ns - t.since_ns) / 1000
        r.user, r.user_mods, r.kernel_frames = uf, mods, kf
        r.frames = join_frames(uf, kf)
        r.site = M.site(r) or (sysname and sysname .. "()") or (kf[#kf] and kf[#kf] .. "()") or nil
      end
      threads[#threads + 1] = r
    end
  end
  -- blocked threads first, the longest blocked first
  table.sort(threads, function(a, b)
    local x, y = a.blocked_for_us or -1, b.blocked_for_us or -1
    if x ~= y then
      return x > y
    end
    return a.tid < b.tid
  end)
  local report = { kind = "offcpu_now", threads = threads }
  local worst
  for _, t in ipairs(threads) do
    if t.blocked_for_us and (opts.kernel_threads or not t.kernel) then
      worst = t
      break
    end
  end
  if worst then
    report.verdict = string.format("%s (tid %d) has been %s for %s%s", worst.comm, worst.tid,
      DESCRIBE[worst.category] or worst.category, M.duration_text(worst.blocked_for_us),
      worst.site and (" in " .. worst.site) or "")
  else
    report.verdict = "no thread is blocked"
  end
  return report
end

--- "850 ms", "12.3 s", "2 h 05 min": a length of time for people.
function M.duration_text(us)
  if us < 1e6 then
    return string.format("%.0f ms", us / 1000)
  elseif us < 600e6 then
    return string.format("%.1f s", us / 1e6)
  elseif us < 7200e6 then
    return string.format("%.0f min", us / 60e6)
  end
  return string.format("%d h %02d min", math.floor(us / 3600e6), math.floor(us / 60e6) % 60)
end

--- The text of a --now report: a table of the threads, the verdict, then
--- each blocked thread's stack (kernel frames first, as the leaf).
function M.now_text(report)
  local out = {}
  local function w(fmt, ...)
    out[#out + 1] = string.format(fmt, ...)
  end
  w("%-8s %-8s %-16s %5s %12s  %-9s %-16s %s", "PID", "TID", "COMM", "STATE", "BLOCKED FOR", "CATEGORY", "SYSCALL",
    "WHERE")
  for _, t in ipairs(report.threads) do
    if t.blocked_for_us then
      w("%-8d %-8d %-16s %5s %12s  %-9s %-16s %s", t.pid, t.tid, t.comm, t.state, M.duration_text(t.blocked_for_us),
        t.category, t.syscall ~= "" and t.syscall or "-", t.site or "?")
    else
      w("%-8d %-8d %-16s %5s %12s  %-9s %-16s %s", t.pid, t.tid, t.comm, t.state, "running", "-", "-", "-")
    end
  end
  w("")
  w("Verdict: %s", report.verdict)
  for _, t in ipairs(report.threads) do
    if t.blocked_for_us and #t.frames > 0 then
      w("")
      w("Thread %d (%s) of %d, %s for %s, %s%s:", t.tid, t.comm, t.pid, t.state, M.duration_text(t.blocked_for_us),
        t.category, t.syscall ~= "" and (" in " .. t.syscall) or "")
      for j = #t.frames, 1, -1 do
        w("    %s", t.frames[j])
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- output

--- Folded stacks: "comm;user frames;-;kernel frames value_us" per line.
-- A name in a folded line: ';' separates frames and a line ends the record,
-- and a thread may name itself with either (prctl PR_SET_NAME).
local function folded_name(name)
  return (tostring(name):gsub(";", ":"):gsub("[\r\n]", " "))
end

function M.folded(report)
  local lines = {}
  for _, s in ipairs(report.stacks) do
    local parts = { folded_name(s.comm) }
    for _, f in ipairs(s.frames) do
      parts[#parts + 1] = folded_name(f)
    end
    lines[#lines + 1] = table.concat(parts, ";") .. " " .. math.floor(s.us + 0.5)
  end
  return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
end

local COLORS = {
  sleep = "#7fb3d5", lock = "#e74c3c", io = "#e67e22", net = "#27ae60", ipc = "#8e44ad", poll = "#16a085",
  paging = "#d4ac0d", runqueue = "#95a5a6", other = "#bdc3c7",
}

local function xml(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

--- A self-contained SVG off-CPU flame graph: one box per frame, width in
--- proportion to time, coloured by category, hover titles with the time
--- and share.
function M.svg(report, title)
  -- merge stacks into a tree: root -> comm -> frames
  local root = { name = "all", us = 0, kids = {}, order = {} }
  for _, s in ipairs(report.stacks) do
    local node = root
    root.us = root.us + s.us
    local path = { s.comm }
    for _, f in ipairs(s.frames) do
      path[#path + 1] = f
    end
    for _, name in ipairs(path) do
      local k = node.kids[name]
      if not k then
        k = { name = name, us = 0, kids = {}, order = {}, cats = {} }
        node.kids[name] = k
        node.order[#node.order + 1] = k
      end
      k.us = k.us + s.us
      k.cats[s.category] = (k.cats[s.category] or 0) + s.us
      node = k
    end
  end
  local width, row = 1200, 17
  local maxdepth = 0
  local boxes = {}
  local function walk(node, x, depth)
    maxdepth = math.max(maxdepth, depth)
    table.sort(node.order, function(a, b)
      return a.name < b.name
    end)
    local cx = x
    for _, k in ipairs(node.order) do
      local w = root.us > 0 and k.us / root.us * (width - 20) or 0
      if w >= 0.3 then
        boxes[#boxes + 1] = { node = k, x = cx, w = w, depth = depth }
        walk(k, cx, depth + 1)
      end
      cx = cx + w
    end
  end
  walk(root, 10, 1)
  local height = (maxdepth + 2) * row + 40
  local out = {
    string.format('<?xml version="1.0" standalone="no"?>\n<svg version="1.1" width="%d" height="%d" '
      .. 'xmlns="http://www.w3.org/2000/svg">', width, height),
    string.format('<rect x="0" y="0" width="%d" height="%d" fill="#fdfdfd"/>', width, height),
    string.format('<text x="%d" y="24" font-family="Verdana" font-size="17" text-anchor="middle">%s</text>',
      width / 2, xml(title or "Off-CPU Time Flame Graph")),
    string.format('<text x="10" y="%d" font-family="Verdana" font-size="12">width = off-CPU time (us); total %d us'
      .. '</text>', height - 8, math.floor(root.us)),
  }
  for _, b in ipairs(boxes) do
    local k = b.node
    local cat, best = "other", -1
    for c, us in pairs(k.cats) do
      if us > best then
        cat, best = c, us
      end
    end
    local color = k.name == "-" and "#cccccc" or COLORS[cat] or COLORS.other
    local y = height - 30 - b.depth * row
    local label = ""
    local chars = math.floor((b.w - 6) / 7)
    if chars >= 3 then
      label = #k.name <= chars and k.name or (k.name:sub(1, chars - 2) .. "..")
    end
    out[#out + 1] = string.format('<g><title>%s (%d us, %.2f%%, %s)</title><rect x="%.1f" y="%d" width="%.1f" '
      .. 'height="%d" fill="%s" rx="2"/><text x="%.1f" y="%d" font-family="Verdana" font-size="11">%s</text></g>',
      xml(k.name), math.floor(k.us), 100 * k.us / math.max(root.us, 1e-9), cat, b.x, y, b.w, row - 1, color,
      b.x + 3, y + 12, xml(label))
  end
  out[#out + 1] = "</svg>\n"
  return table.concat(out, "\n")
end

--- The human report: threads, top stacks, syscalls, the verdict.
function M.text(report, top)
  top = top or 5
  local out = {}
  local function w(fmt, ...)
    out[#out + 1] = string.format(fmt, ...)
  end
  w("Off-CPU time over %.2f s", report.duration_us / 1e6)
  w("")
  w("%-8s %-8s %-16s %10s %10s %10s %6s  %s", "PID", "TID", "COMM", "WALL ms", "ONCPU ms", "OFFCPU ms", "OFF%",
    "BY CATEGORY (ms)")
  for _, t in ipairs(report.threads) do
    local cats = {}
    for c, us in pairs(t.by_category) do
      cats[#cats + 1] = { c, us }
    end
    table.sort(cats, function(a, b)
      return a[2] > b[2]
    end)
    local cs = {}
    for _, c in ipairs(cats) do
      cs[#cs + 1] = string.format("%s %.1f", c[1], c[2] / 1000)
    end
    w("%-8d %-8d %-16s %10.1f %10.1f %10.1f %5.0f%%  %s", t.pid, t.tid, t.comm, t.wall_us / 1000, t.oncpu_us / 1000,
      t.offcpu_us / 1000, 100 * t.share, table.concat(cs, ", "))
  end
  w("")
  w("Top blocking call sites:")
  for i = 1, math.min(top, #report.sites) do
    local s = report.sites[i]
    w("  %10.1f ms %6d blocks  %-9s %s (%s)", s.us / 1000, s.count, s.category, s.site, s.comm)
  end
  if #report.syscalls > 0 then
    w("")
    w("%-20s %8s %12s %12s", "SYSCALL", "BLOCKS", "TOTAL ms", "MAX ms")
    for _, s in ipairs(report.syscalls) do
      w("%-20s %8d %12.1f %12.1f", s.name, s.blocks, s.us / 1000, s.max_us / 1000)
    end
  end
  w("")
  w("Top stacks:")
  for i = 1, math.min(top, #report.stacks) do
    local s = report.stacks[i]
    w("  %s %d (tid %d): %.1f ms in %d blocks, %s%s", s.comm, s.pid, s.tid, s.us / 1000, s.count, s.category,
      s.syscall ~= "" and (" in " .. s.syscall) or "")
    for j = #s.frames, 1, -1 do
      w("      %s", s.frames[j])
    end
  end
  if report.lost_stacks > 0 then
    local why, parts = report.lost_stacks_why or {}, {}
    for _, r in ipairs(M.LOST_WHY) do
      if (why[r[1]] or 0) > 0 then
        parts[#parts + 1] = string.format("%d %s", why[r[1]], r[2])
      end
    end
    w("")
    w("%d stacks could not be read (shown as [Missed ... Stack]): %s", report.lost_stacks,
      table.concat(parts, ", "))
  end
  if (report.missed_switches or 0) > 0 then
    w("")
    w("%d context switches were not seen (the kernel skipped the program while another BPF program or a map "
      .. "operation held that CPU): blocks around them are missing", report.missed_switches)
  end
  if (report.unended_blocks or 0) > 0 then
    w("")
    w("%d blocks are missing: the switch that ended them was not seen", report.unended_blocks)
  end
  if (report.lost_blocks or 0) > 0 then
    w("")
    w("%d blocks could not be stored (the kernel's map of blocks was full or busy): they are missing from the "
      .. "totals", report.lost_blocks)
  end
  w("")
  w("Verdict: %s", report.verdict)
  return table.concat(out, "\n") .. "\n"
end

--- Stop tracing for a final report: every probe is detached (the maps
--- stay), and report() counts up to this moment, blocks in progress
--- included, from maps that no program changes any more.
function Tracer:stop()
  if not self.stopped_ns then
    self.bpf:detach_all()
    self.stopped_ns = core.monotonic_ns()
  end
end

function Tracer:close()
  self.tree:close()
end

--- Off-CPU totals of a tracked tree so far (bpf: the program with
--- offcpu.c), in the original denet's shape, for the monitor's
--- aggregated.ebpf.offcpu: blocked time (run-queue waits apart; blocks
--- in progress count up to now), blocks that ended, their mean, longest
--- and shortest, per thread, and the threads that blocked the most.
function M.monitor_fields(bpf)
  local threads, now = {}, core.monotonic_ns()
  local total, events, maxns, minns = 0, 0, 0, nil
  local ended = 0 -- the time of the blocks that ended (events)
  local runq = 0
  local by_cat = {}
  for tid, v in bpf:get_table("dn_offcpu_threads"):items() do
    local t = { pid = v.tgid, tid = tid, comm = ffi.string(v.comm), time_ns = 0, events = 0, by_category = {} }
    threads[tid] = t
    -- a block in progress counts up to now (its events when it ends)
    local start = tonumber(v.start)
    if start > 0 and tonumber(v.died) == 0 and now > start then
      local ns = now - start
      local cat = M.category(v.state, v.syscall >= 0 and sysnames.name(v.syscall) or nil, {})
      by_cat[cat] = (by_cat[cat] or 0) + ns
      if cat == "runqueue" then
        runq = runq + ns
      else
        total = total + ns
        maxns = math.max(maxns, ns + tonumber(v.before))
        t.time_ns = t.time_ns + ns
        t.by_category[cat] = (t.by_category[cat] or 0) + ns
      end
    end
  end
  for k, v in bpf:get_table("dn_offcpu"):items() do
    local ns, n = tonumber(v.total_ns), tonumber(v.count)
    local cat = M.category(k.state, k.syscall >= 0 and sysnames.name(k.syscall) or nil, {})
    by_cat[cat] = (by_cat[cat] or 0) + ns
    if cat == "runqueue" then
      runq = runq + ns
    else
      total, events, ended = total + ns, events + n, ended + ns
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
    if t.time_ns > 0 then
      stats[t.pid .. ":" .. tid] = { comm = t.comm, time_ns = t.time_ns, events = t.events,
        by_category = t.by_category }
      top[#top + 1] = t
    end
  end
  table.sort(top, function(a, b)
    return a.time_ns > b.time_ns
  end)
  local tops = {}
  local function round(x, d)
    local m = 10 ^ d
    return math.floor(x * m + 0.5) / m
  end
  for i = 1, math.min(5, #top) do
    local t = top[i]
    tops[i] = { pid = t.pid, tid = t.tid, comm = t.comm, time_ms = round(t.time_ns / 1e6, 3),
      percentage = round(total > 0 and 100 * t.time_ns / total or 0, 2) }
  end
  return {
    total_time_ns = total, total_events = events, avg_time_ns = events > 0 and math.floor(ended / events) or 0,
    max_time_ns = maxns, min_time_ns = minns or 0, runqueue_time_ns = runq, by_category_ns = by_cat,
    thread_stats = stats,
    top_blocking_threads = require("denet.json").array(tops),
  }
end

--- A whole off-CPU run, as `denet script offcpu` and the Python binding
--- do it: opts.cmd (a list: run it, traced from its first instruction),
--- or opts.roots (pids) / opts.tid, or neither (the whole machine);
--- opts.duration (seconds; a command is stopped then); opts.host (a
--- denet.plugins host: on_start, on_process, intervals, on_offcpu, on_end);
--- opts.on_tick(tracer, final, pid) every opts.tick seconds (default 1)
--- and once more at the end, before the tracer closes (the Prometheus
--- export); and start()'s options. Returns the report and, for a command,
--- its exit code.
function M.run(opts)
  errors.check_opts("offcpu.run", opts, RUN_OPTS)
  local denet = require("denet")
  local host = opts.host or require("denet.plugins").host({})
  host:init()
  local proc
  if opts.cmd and #opts.cmd > 0 then
    denet.set_subreaper(true)
    proc = denet.spawn(opts.cmd)
  end
  local user_on_process = opts.on_process
  local t = M.start(setmetatable({
    proc = proc,
    on_process = function(ev)
      host:call("on_process", ev)
      if user_on_process then
        user_on_process(ev)
      end
    end,
  }, { __index = opts }))
  local roots = opts.roots or {}
  host:call("on_start", { pid = proc and proc.pid or roots[1], pids = roots, cmd = opts.cmd or {}, tid = opts.tid })
  host:start_intervals(require("denet.plugins").stopper(proc))
  t:capture()
  -- mappings are captured at intervals and after exec, so stacks of
  -- processes that exit before the report still resolve
  local cap = denet.every(0.25, function()
    t:capture()
  end)
  local root = proc and proc.pid or roots[1]
  local tick = opts.on_tick and denet.every(opts.tick or 1, function()
    opts.on_tick(t, false, root)
  end)
  -- the report names kernel frames: read the kernel's symbols while
  -- tracing, once the start's burst of stacks to learn is through
  local warm = not opts.user_only and denet.after(0.2, syms.load_kernel)
  local code
  local ok, err = pcall(function()
    if proc then
      t:mark_start()
      proc:resume()
      denet.sleep(0.02)
      t:capture()
      code = proc:wait_for(opts.duration, nil, { forward = true })
    else
      denet.run{ duration = opts.duration }
    end
  end)
  cap:close()
  if warm then
    warm:close()
  end
  host:stop_intervals()
  if ok then
    -- the last export and the report read the same still maps
    t:stop()
  end
  if tick then
    tick:close()
    if ok then
      opts.on_tick(t, true, root)
    end
  end
  if not ok then
    t:close()
    error(err, 0)
  end
  local report = t:report()
  t:close()
  host:call("on_offcpu", report)
  host:call("on_end", report)
  return report, proc and code or nil
end

return M
