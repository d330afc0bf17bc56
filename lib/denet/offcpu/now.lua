-- denet.offcpu.now: where every thread of the targets is blocked right
-- now and for how long, read without stopping anything (denet.snapshot),
-- with its stacks, category and a verdict (`denet script offcpu --now`).
local core = require("denet.core")
local errors = require("denet.errors")
local classify = require("denet.offcpu.classify")
local stacks = require("denet.stacks")
local sysnames = require("denet.sysnames")

local M = {}

local NOW_OPTS = { "roots", "tid", "threads", "kernel_threads", "stack_depth", "states" }

-- The processes of the targets: a thread's, roots and their descendants,
-- or nil (every process).
local function target_pids(opts)
  if opts.tid then
    local status = core.read_file(string.format("/proc/%d/status", opts.tid))
    if not status then
      errors.raise(string.format("no thread %d", opts.tid))
    end
    return { tonumber(status:match("Tgid:%s*(%d+)")) }
  end
  if not (opts.roots and #opts.roots > 0) then
    return nil
  end
  local pids = {}
  for _, root in ipairs(opts.roots) do
    if not core.read_file(string.format("/proc/%d/stat", root)) then
      errors.raise(string.format("no process %d", root))
    end
    pids[#pids + 1] = root
    for _, d in ipairs(require("denet.procfs").descendants(root)) do
      pids[#pids + 1] = d
    end
  end
  return pids
end

-- A thread of the snapshot as the report shows it (stacks and category
-- when it is blocked).
local function thread_entry(t, st, taken_ns, opts, modules)
  local r = { pid = t.pid, tid = t.tid, comm = t.comm, state = t.state, kernel = t.kernel or nil,
    cpu_time_us = t.runtime_ns and t.runtime_ns / 1000 }
  if t.state == "R" then
    return r
  end
  local uf, mods, kf, lines, pysite = stacks.of_snapshot(t, opts.stack_depth)
  local sysname = t.syscall >= 0 and sysnames.name(t.syscall) or nil
  r.syscall = sysname or ""
  r.category = classify.category(st, sysname, kf)
  r.blocked_for_us = t.since_ns and math.max(0, taken_ns - t.since_ns) / 1000
  r.user, r.user_mods, r.kernel_frames = uf, mods, kf
  r.user_lines = require("denet.offcpu.report").lines_or_nil(lines)
  -- the user frames' addresses, root first (as eu-stack -p gives them,
  -- leaf first), and the files they are in
  if t.uaddrs and #uf > 0 then
    local addrs = {}
    for i = #t.uaddrs, 1, -1 do
      addrs[#addrs + 1] = string.format("0x%x", t.uaddrs[i])
    end
    r.user_addrs = addrs
    stacks.frames.modules_of(t.pid, t.uaddrs, modules)
  end
  r.frames = stacks.frames.join(uf, kf)
  r.site = pysite or stacks.frames.site(r) or (sysname and sysname .. "()") or (kf[#kf] and kf[#kf] .. "()") or nil
  return r
end

--- Where every thread of the targets is blocked right now and for how
--- long. opts: roots ({pid,...}, their trees; none: every process but
--- denet), tid, threads ("user" or "kernel": only those), kernel_threads
--- (a kernel thread may be the verdict's), stack_depth, states (a state
--- mask). Returns the report (docs/offcpu.md, "Blocked now").
function M.now(opts)
  errors.check_opts("offcpu.now", opts, NOW_OPTS)
  local pids = target_pids(opts)
  local taken_ns = core.monotonic_ns()
  local threads, modules = {}, {}
  for _, t in ipairs(require("denet.snapshot").take(pids, core.ids().pid)) do
    local st = require("denet.snapshot").trace_state(t.state_word)
    local kept = (not opts.tid or t.tid == opts.tid) and not (opts.threads == "user" and t.kernel)
      and not (opts.threads == "kernel" and not t.kernel) and classify.state_kept(opts.states, st)
    if kept then
      threads[#threads + 1] = thread_entry(t, st, taken_ns, opts, modules)
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
  local report = { kind = "offcpu_now", threads = threads, verdict = "no thread is blocked",
    modules = next(modules) and modules or nil }
  for _, t in ipairs(threads) do
    if t.blocked_for_us and (opts.kernel_threads or not t.kernel) then
      report.verdict = string.format("%s (tid %d) has been %s for %s%s", t.comm, t.tid,
        classify.DESCRIBE[t.category] or t.category, classify.duration_text(t.blocked_for_us),
        t.site and (" in " .. t.site) or "")
      break
    end
  end
  return report
end

return M
