-- denet.snapshot: threads as they are right now, without stopping them:
-- each one's state, since when it has been off the CPU, its CPU time, the
-- syscall it is in, and its kernel and user stacks.
--
-- Where the kernel has task iterators with bpf_get_task_stack and
-- bpf_task_pt_regs (feature task_iter), one pass of bpf-src/tasks.c reads
-- it all; elsewhere /proc does (kernel stacks by name only, user stacks
-- from the stack pointer alone). The user stack is walked here, through
-- /proc/PID/mem, from the registers the thread saved when it entered the
-- kernel: the frames a frame-pointer walk loses in libc come from the
-- call frame information, as the tracer recovers them.
--
-- When a thread last ran is the scheduler's se.exec_start, a time on its
-- CPU's run-queue task clock; calibrate() learns how that clock stands
-- against CLOCK_MONOTONIC on each CPU.
local bit = require("bit")
local ffi = require("ffi")
local core = require("denet.core")
local kernel = require("denet.kernel")
local python = require("denet.stacks.python")

local M = {}

ffi.cdef([[
int sched_getaffinity(int pid, size_t size, uint8_t *mask);
int sched_setaffinity(int pid, size_t size, const uint8_t *mask);
int usleep(unsigned int usec);
]])
local snap_ptr = require("denet.records").ptr("dn_snap_rec") -- tasks.c's records

local PF_KTHREAD = 0x00200000

--- The letter ps shows for a task state word (task_struct.__state).
function M.state_letter(state)
  if state == 0 then
    return "R"
  elseif bit.band(state, 0x402) == 0x402 then
    return "I" -- TASK_IDLE: a kernel thread with nothing to do
  elseif bit.band(state, 2) ~= 0 then
    return "D"
  elseif bit.band(state, 1) ~= 0 then
    return "S"
  elseif bit.band(state, 4) ~= 0 then
    return "T"
  elseif bit.band(state, 8) ~= 0 then
    return "t"
  end
  return "?"
end

-- /proc's letters as task state words
local LETTER_STATE = { S = 1, D = 2, I = 0x402, T = 4, t = 8 }

--- A task state word as the sched_switch tracepoint reports it (what the
--- tracer keys blocks by): its low byte, but an idle kernel thread
--- (TASK_IDLE) reports TASK_REPORT_IDLE, not an uninterruptible sleep.
function M.trace_state(word)
  if bit.band(word, 0x402) == 0x402 then
    return 0x80
  end
  return bit.band(word, 0xff)
end

---------------------------------------------------------------------------
-- clocks

local CPU_SET_BYTES = 128

-- se.exec_start of the calling thread, in ns (/proc prints ms.ns)
local function own_exec_start()
  local text = core.read_file("/proc/thread-self/sched") or ""
  local ms, frac = text:match("se%.exec_start%s*:%s*(%d+)%.(%d+)")
  if not ms then
    return nil
  end
  return tonumber(ms) * 1000000 + tonumber((frac .. "000000"):sub(1, 6))
end

--- CLOCK_MONOTONIC minus the run-queue task clock, per CPU of cpus (a
--- set): the calling thread is moved to each CPU in turn and reads its own
--- se.exec_start right after it was put on that CPU. The clocks differ by
--- CPU (each excludes its own interrupt time), by up to a second after
--- days of uptime. CPUs the thread may not run on are left out.
function M.calibrate(cpus)
  local old = ffi.new("uint8_t[?]", CPU_SET_BYTES)
  if ffi.C.sched_getaffinity(0, CPU_SET_BYTES, old) ~= 0 then
    return {}
  end
  local out = {}
  for cpu in pairs(cpus) do
    local mask = ffi.new("uint8_t[?]", CPU_SET_BYTES)
    if cpu >= 0 and cpu < CPU_SET_BYTES * 8 then
      mask[math.floor(cpu / 8)] = bit.lshift(1, cpu % 8)
      if ffi.C.sched_setaffinity(0, CPU_SET_BYTES, mask) == 0 then
        local best
        for _ = 1, 3 do
          ffi.C.usleep(100) -- put on the CPU afresh: exec_start is now
          local now = core.monotonic_ns()
          local e = own_exec_start()
          if e and (not best or now - e < best) then
            best = now - e
          end
        end
        out[cpu] = best
      end
    end
  end
  ffi.C.sched_setaffinity(0, CPU_SET_BYTES, old)
  return out
end

--- The user stack of a thread of process pid from its saved registers:
--- addrs, leaf first; leaf, the frames a frame-pointer walk loses (none
--- here); and whether the walk stopped short of the entry point. Walked
--- from the files' unwind tables (denet.stacks.dwarf); by frame pointers
--- (denet.stacks.unwind) where the code at the IP has no table (JIT code).
function M.user_stack(pid, ip, sp, bp)
  local dwarf = require("denet.stacks.dwarf")
  local addrs, flags = dwarf.walk(pid, ip, sp, bp)
  if addrs and not (#addrs == 1 and flags == dwarf.F_NOTABLE) then
    return addrs, {}, flags ~= 0
  end
  local fp, leaf = require("denet.stacks.unwind").walk(pid, ip, sp, bp)
  return fp, leaf, false
end

---------------------------------------------------------------------------
-- reading threads

local prog, progfd, iterator_failed

-- The iterator program (the snapshot feature's part, tasks.c), built once
-- per run (kept by the compile cache).
local function iterator()
  if progfd then
    return prog, progfd
  end
  prog = require("denet.compose").build{ parts = { "snapshot" }, name = "tasks", autoattach = false }.bpf
  progfd = prog:load_func("bpf_iter__task", require("denet.bpf").TRACING)
  return prog, progfd
end

--- Load the task iterator now (when the kernel has it), so that a later
--- take() reads the threads at once: a tracer calls this before its
--- probes go live, to make the gap between the start of its window and
--- the snapshot small.
function M.prepare()
  if kernel.has("task_iter") and not iterator_failed then
    pcall(iterator)
  end
end

-- A thread's syscall from its saved registers: a SYSCALL instruction
-- leaves cx == ip and r11 == flags; -1 when it is in none.
local function regs_syscall(r)
  if r.ip ~= 0 and r.cx == r.ip and r.r11 == r.eflags and r.orig_ax < 4096 then
    return tonumber(r.orig_ax)
  end
  return -1
end

local function from_iterator(pids, exclude)
  local p, fd = iterator()
  local all = p:get_table("dn_snap_all")
  local want = p:get_table("dn_snap_pids")
  want:clear()
  if pids then
    all:set(0, 0)
    for _, pid in ipairs(pids) do
      want:set(pid, 1)
    end
  else
    all:set(0, 1)
  end
  local bytes, err = core.iter_read(fd)
  if not bytes then
    return nil, err
  end
  local size = ffi.sizeof("struct dn_snap_rec")
  local out = {}
  for i = 0, #bytes / size - 1 do
    local r = ffi.cast(snap_ptr, ffi.cast("const char *", bytes) + i * size)
    local tgid = tonumber(r.tgid)
    if tgid ~= exclude then
      local t = {
        pid = tgid, tid = tonumber(r.tid), comm = ffi.string(r.comm), state_word = tonumber(r.state),
        kernel = bit.band(r.flags, PF_KTHREAD) ~= 0, cpu = tonumber(r.cpu), exec_start = tonumber(r.exec_start),
        runtime_ns = tonumber(r.runtime),
      }
      t.state = M.state_letter(t.state_word)
      if not t.kernel then
        t.regs = { ip = tonumber(r.ip), sp = tonumber(r.sp), bp = tonumber(r.bp) }
        t.syscall = regs_syscall(r)
      else
        t.syscall = -1
      end
      if r.kbytes > 0 then
        t.kaddrs = {}
        for j = 0, r.kbytes / 8 - 1 do
          if r.kstack[j] == 0 then
            break
          end
          t.kaddrs[#t.kaddrs + 1] = r.kstack[j] -- kept 64-bit: a double would round it
        end
      end
      out[#out + 1] = t
    end
  end
  return out
end

-- The threads of process pid from /proc (nil when it is gone).
local function proc_threads(pid, out)
  local base = "/proc/" .. pid .. "/task"
  local tids = core.list_dir(base)
  if not tids then
    return
  end
  for _, name in ipairs(tids) do
    local tid = tonumber(name)
    local dir = base .. "/" .. name
    local stat = tid and core.read_file(dir .. "/stat")
    if stat then
      -- after the last ')': state is field 3, flags 9, processor 39
      local comm = stat:match("%((.*)%)") or "?"
      local f = {}
      for w in stat:match(".*%)%s*(.*)"):gmatch("%S+") do
        f[#f + 1] = w
      end
      local t = { pid = pid, tid = tid, comm = comm, state = f[1], cpu = tonumber(f[37]) or -1,
        kernel = bit.band(tonumber(f[7]) or 0, PF_KTHREAD) ~= 0 }
      t.state_word = t.state == "R" and 0 or LETTER_STATE[t.state] or 1
      local sched = core.read_file(dir .. "/sched") or ""
      local ms, frac = sched:match("se%.exec_start%s*:%s*(%d+)%.(%d+)")
      if ms then
        t.exec_start = tonumber(ms) * 1000000 + tonumber((frac .. "000000"):sub(1, 6))
      end
      t.runtime_ns = tonumber((core.read_file(dir .. "/schedstat") or ""):match("^(%d+)"))
      -- "nr args... sp pc", "-1 sp pc" (blocked outside a syscall), "running"
      local sc = core.read_file(dir .. "/syscall") or ""
      local words = {}
      for w in sc:gmatch("%S+") do
        words[#words + 1] = w
      end
      t.syscall = tonumber(words[1]) or -1
      if not t.kernel and #words >= 3 then
        t.regs = { sp = tonumber(words[#words - 1]), ip = tonumber(words[#words]) }
      end
      if t.state ~= "R" then
        t.knames = {}
        for line in (core.read_file(dir .. "/stack") or ""):gmatch("[^\n]+") do
          local fn = line:match("%]%s+([%w_%.]+)")
          if fn then
            t.knames[#t.knames + 1] = fn
          end
        end
      end
      out[#out + 1] = t
    end
  end
end

local function from_proc(pids, exclude)
  local out = {}
  if not pids then
    pids = {}
    for _, name in ipairs(core.list_dir("/proc") or {}) do
      local pid = tonumber(name)
      if pid and pid ~= exclude then
        pids[#pids + 1] = pid
      end
    end
  end
  for _, pid in ipairs(pids) do
    proc_threads(pid, out)
  end
  return out
end

--- The threads of processes pids (a list; nil: every process but
--- `exclude`), now. Each: pid, tid, comm, state (a ps letter), state_word,
--- kernel (a kernel thread), cpu, runtime_ns (its CPU time), syscall (-1:
--- none), since_ns (CLOCK_MONOTONIC when it last ran, for threads not
--- running), kaddrs (kernel stack addresses, leaf first) or knames (its
--- function names, from /proc), uaddrs and uleaf (user_stack's, for
--- threads not running). opts.stacks = false skips the user stacks;
--- opts.offsets: the clock offsets of an earlier take (the list's
--- `offsets`) instead of measuring them again; opts.cpus: a set of CPUs
--- whose offsets are measured too (for a later take).
function M.take(pids, exclude, opts)
  local list
  if kernel.has("task_iter") and not iterator_failed then
    local ok, res, err = pcall(from_iterator, pids, exclude)
    list = ok and res or nil
    if not list then
      -- said once; /proc serves from then on
      iterator_failed = true
      io.stderr:write(string.format("denet: the task iterator cannot run (%s): threads are read from /proc, "
        .. "without user stacks above the leaf\n", tostring(ok and err or res):gsub("\n.*", "")))
    end
  end
  list = list or from_proc(pids, exclude)
  local cpus = {}
  for _, t in ipairs(list) do
    if t.state ~= "R" and t.exec_start and t.cpu >= 0 then
      cpus[t.cpu] = true
    end
  end
  -- (the CPUs an earlier take measured are not measured again)
  local offset, missing = {}, {}
  for cpu, o in pairs(opts and opts.offsets or {}) do
    offset[cpu] = o
  end
  for cpu in pairs(opts and opts.cpus or {}) do
    cpus[cpu] = true
  end
  for cpu in pairs(cpus) do
    missing[cpu] = offset[cpu] == nil or nil
  end
  if next(missing) ~= nil then
    for cpu, o in pairs(M.calibrate(missing)) do
      offset[cpu] = o
    end
  end
  list.offsets = offset
  local any
  for _, o in pairs(offset) do
    any = any or o
  end
  for _, t in ipairs(list) do
    if t.state ~= "R" and t.exec_start and t.exec_start > 0 then
      local o = offset[t.cpu] or any
      t.since_ns = o and t.exec_start + o
      if t.regs and not (opts and opts.stacks == false) then
        t.uaddrs, t.uleaf, t.utrunc = M.user_stack(t.pid, t.regs.ip, t.regs.sp, t.regs.bp)
        -- a CPython's frames, read with the native ones
        local py = python.of_process(t.pid)
        if py then
          t.pyframes, t.pycut = python.walk(t.pid, t.tid, py)
        end
      end
    end
  end
  return list
end

return M
