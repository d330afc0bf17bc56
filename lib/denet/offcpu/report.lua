-- denet.offcpu.report: a tracer's maps read into figures. report() is the
-- whole report (the JSON contract of docs/offcpu.md: threads, stacks,
-- syscalls, call sites, what could not be seen, a verdict); figures() the
-- light totals every monitor sample carries (aggregated.ebpf.offcpu).
-- Both count blocks in progress up to now (or up to when tracing stopped)
-- and classify each block the same way, from its state, syscall and
-- kernel frames, so `denet run --offcpu` and `denet script offcpu` agree.
local ffi = require("ffi")
local core = require("denet.core")
local classify = require("denet.offcpu.classify")
local stacks = require("denet.stacks")
local sysnames = require("denet.sysnames")
local util = require("denet.util")

local M = {}

-- The frames the walk lost of an entry (zeros when none).
local function leaf_of(k)
  local out = {}
  for i = 0, stacks.unwind.LEAF_FRAMES - 1 do
    local a = tonumber(k.leaf[i])
    if a == 0 then
      break
    end
    out[#out + 1] = a
  end
  return out
end

local function entry_key(k)
  return table.concat({ k.tgid, k.tid, k.ustack, k.kstack, k.state, k.syscall, table.concat(k.leaf, ","),
    k.pystack or 0 }, ":")
end

-- The blocks of a tracer: those that ended (dn_offcpu) and those still in
-- progress at now_ns (dn_offcpu_threads), counted up to then; a block in
-- progress at the same place as ended ones joins them. min_ns, max_ns:
-- the length filters (a block that began before tracing: its whole
-- length). Each: { k = { tgid, tid, ustack, kstack, state, syscall, leaf },
-- total_ns, count, max_ns, min_ns (of those that ended), open and open_ns
-- (the blocks in progress among them, and their time) }.
local function entries_of(bpf, now_ns, min_ns, max_ns)
  local entries, by_key = {}, {}
  for key, v in bpf:get_table("dn_offcpu"):items() do
    local k = { tgid = key.tgid, tid = key.tid, ustack = key.ustack, kstack = key.kstack, state = key.state,
      syscall = key.syscall, leaf = leaf_of(key), pystack = key.pystack }
    entries[#entries + 1] = { k = k, total_ns = tonumber(v.total_ns), count = tonumber(v.count),
      max_ns = tonumber(v.max_ns), min_ns = tonumber(v.min_ns), open = 0, open_ns = 0 }
    by_key[entry_key(k)] = entries[#entries]
  end
  for tid, st in bpf:get_table("dn_offcpu_threads"):items() do
    local start = tonumber(st.start)
    local d = now_ns - start
    local whole = d + tonumber(st.before)
    if start > 0 and tonumber(st.died) == 0 and whole >= min_ns and whole <= max_ns then
      local k = { tgid = st.tgid, tid = tid, ustack = st.ustack, kstack = st.kstack, state = st.state,
        syscall = st.syscall, leaf = leaf_of(st), pystack = st.pystack }
      local e = by_key[entry_key(k)]
      if e then
        e.total_ns, e.count, e.max_ns = e.total_ns + d, e.count + 1, math.max(e.max_ns, whole)
      else
        e = { k = k, total_ns = d, count = 1, max_ns = whole, open = 0, open_ns = 0 }
        entries[#entries + 1] = e
      end
      e.open, e.open_ns = e.open + 1, e.open_ns + d
    end
  end
  return entries
end

-- A tracer's stack resolver (kept: stack ids are never reused by the
-- stack map, so a name found once is the name).
local function resolver(t)
  t.resolver = t.resolver or stacks.resolver(t.bpf, "dn_offcpu_stacks", { depth = t.opts.stack_depth,
    user_only = t.opts.user_only, kernel_only = t.opts.kernel_only, unwinder = t.engine.dwarf,
    python = t.engine.python })
  return t.resolver
end

-- The frames of an entry's block: user frames and their flags, kernel
-- frames (root first), from the stack map, or for a block that began
-- before tracing from the snapshot read then.
local function frames_of(t, k)
  local snap = (k.ustack == stacks.STACK_SNAPSHOT or k.kstack == stacks.STACK_SNAPSHOT) and t.preblocked
    and t.preblocked[k.tid]
  if snap then
    t.snap_frames = t.snap_frames or {}
    local f = t.snap_frames[k.tid]
    if not f then
      local uf, mods, kf, lines, site = stacks.of_snapshot(snap, t.opts.stack_depth, t.opts.kernel_only
        or k.ustack ~= stacks.STACK_SNAPSHOT)
      f = { uf, mods, t.opts.user_only and {} or kf, lines, site }
      t.snap_frames[k.tid] = f
    end
    return f[1], f[2], f[3], f[4], f[5]
  end
  local r = resolver(t)
  local uf, mods, lines, site = r:user(k.tgid, k.ustack, k.leaf, k.pystack)
  return uf, mods, r:kernel(k.kstack), lines, site
end

-- The kernel frames of an entry's block (root first).
local function kernel_frames_of(t, k)
  if k.kstack == stacks.STACK_SNAPSHOT and t.preblocked and t.preblocked[k.tid] then
    local _, _, kf = frames_of(t, k)
    return kf
  end
  return resolver(t):kernel(k.kstack)
end

-- The category of an entry's block (its kernel frames are read only when
-- the state and syscall do not decide it).
local function category_of(t, k)
  local sysname = k.syscall >= 0 and sysnames.name(k.syscall) or nil
  local cat = classify.decided(k.state, sysname)
  if cat then
    return cat, sysname
  end
  return classify.category(k.state, sysname, kernel_frames_of(t, k)), sysname
end

---------------------------------------------------------------------------
-- threads

-- Threads the program saw, with their wall time in the window (from their
-- start, or the window's, to their end, or now_ns).
local function seen_threads(t, now_ns, t0_ns)
  local threads, raw = {}, {}
  for tid, v in t.bpf:get_table("dn_offcpu_threads"):items() do
    raw[tid] = v
    local born = math.max(tonumber(v.born), t0_ns)
    local died = tonumber(v.died) > 0 and tonumber(v.died) or now_ns
    threads[tid] = { pid = v.tgid, tid = tid, comm = ffi.string(v.comm), wall_us = math.max(0, died - born) / 1000,
      offcpu_us = 0, by_category = {} }
  end
  -- threads that neither blocked nor were preempted (on a CPU all along)
  for tid, base in pairs(t.runtime0 or {}) do
    local runtime = not threads[tid] and base.ns
      and tonumber((core.read_file(string.format("/proc/%d/task/%d/schedstat", base.pid, tid)) or ""):match("^(%d+)"))
    if runtime and runtime > base.ns then
      threads[tid] = { pid = base.pid, tid = tid, comm = base.comm, wall_us = (now_ns - t0_ns) / 1000,
        offcpu_us = 0, by_category = {}, kernel = base.kernel or nil }
    end
  end
  return threads, raw
end

-- Names from /proc for threads still alive (a thread renamed after its
-- last switch shows its newer name); on-CPU time is the kernel's count of
-- the thread's CPU time (now, or at its last switch once it exited) less
-- what it was when tracing began.
local function measure_threads(t, threads, raw)
  for tid, th in pairs(threads) do
    local dir = string.format("/proc/%d/task/%d/", th.pid, tid)
    local c = core.read_file(dir .. "comm")
    if c and c ~= "" then
      th.comm = c:gsub("\n$", "")
    end
    local v = raw[tid]
    local alive = not v or tonumber(v.died) == 0
    local runtime = alive and tonumber((core.read_file(dir .. "schedstat") or ""):match("^(%d+)"))
    if not runtime and v and tonumber(v.runtime) > 0 then
      runtime = tonumber(v.runtime)
    end
    -- the base: when tracing began, or 0 for a thread born since
    local base = t.runtime0 and t.runtime0[tid] and t.runtime0[tid].ns
    if not base and (t.ctx.proc or (v and tonumber(v.born) > 0)) then
      base = 0
    end
    if runtime and base then
      th.measured_oncpu_us = math.max(0, runtime - base) / 1000
    end
  end
end

-- On-CPU time and share of each thread, those shown, most blocked first.
local function thread_list(t, threads)
  local list = {}
  for _, th in pairs(threads) do
    th.wall_us = math.max(th.wall_us, th.offcpu_us + (th.by_category.runqueue or 0))
    if th.measured_oncpu_us then
      th.oncpu_us = math.min(th.measured_oncpu_us, th.wall_us)
      th.oncpu_measured = true
    else
      -- without the kernel's count: the wall time it was neither blocked
      -- nor waiting for a CPU
      th.oncpu_us = math.max(0, th.wall_us - th.offcpu_us - (th.by_category.runqueue or 0))
      th.oncpu_measured = false
    end
    th.measured_oncpu_us = nil
    th.share = th.wall_us > 0 and th.offcpu_us / th.wall_us or 0
    -- a thread with no block to tell it by (one born while tracing) is
    -- shown only where its kind is known to be asked for
    if th.wall_us > 0 and t:kind_kept(th.kernel) then
      list[#list + 1] = th
    end
  end
  table.sort(list, function(a, b)
    return a.offcpu_us > b.offcpu_us
  end)
  return list
end

---------------------------------------------------------------------------
-- stacks

-- Add an entry's block to its thread and to the syscall table.
local function account(threads, comms, by_sys, e, cat, sysname)
  local k = e.k
  local us = e.total_ns / 1000
  local th = threads[k.tid]
  if not th then
    th = { pid = k.tgid, tid = k.tid, comm = comms[k.tid] or "?", wall_us = 0, offcpu_us = 0, by_category = {} }
    threads[k.tid] = th
  end
  if cat ~= "runqueue" then
    th.offcpu_us = th.offcpu_us + us
  end
  th.by_category[cat] = (th.by_category[cat] or 0) + us
  if k.ustack == stacks.STACK_NONE then
    th.kernel = true -- a kernel thread (it has no user stack)
  end
  -- the syscall table counts blocks; waits for a CPU after a preemption
  -- inside a syscall (frequent on PREEMPT_RT) are not blocks
  if sysname and cat ~= "runqueue" then
    local s = by_sys[sysname] or { name = sysname, blocks = 0, us = 0, max_us = 0 }
    s.blocks, s.us, s.max_us = s.blocks + e.count, s.us + us, math.max(s.max_us, e.max_ns / 1000)
    by_sys[sysname] = s
  end
  return th
end

--- The source lines of user frames ("file.c:LINE" or "" each), or nil
--- when none is known.
function M.lines_or_nil(lines)
  for _, l in ipairs(lines or {}) do
    if l ~= "" then
      return lines
    end
  end
end

-- The stacks of the entries, merged where they name the same frames, and
-- the thread and syscall totals.
local function stacks_of(t, entries, threads, comms)
  local list, merged, by_sys = {}, {}, {}
  for _, e in ipairs(entries) do
    local k = e.k
    local cat, sysname = category_of(t, k)
    local th = account(threads, comms, by_sys, e, cat, sysname)
    local uf, mods, kf, lines, site = frames_of(t, k)
    local frames = stacks.frames.join(uf, kf)
    -- two kernel stack ids can name the same frames (one taken while
    -- another tracer's frame sat at the leaf): one entry
    local mkey = table.concat({ k.tid, cat, sysname or "", table.concat(frames, ";") }, "\0")
    local same = merged[mkey]
    if same then
      same.us, same.count = same.us + e.total_ns / 1000, same.count + e.count
      same.max_us = math.max(same.max_us, e.max_ns / 1000)
    else
      list[#list + 1] = { pid = k.tgid, tid = k.tid, comm = th.comm, category = cat, syscall = sysname or "",
        us = e.total_ns / 1000, count = e.count, max_us = e.max_ns / 1000, frames = frames, user = uf,
        user_mods = mods, user_lines = M.lines_or_nil(lines), site = site }
      merged[mkey] = list[#list]
    end
  end
  table.sort(list, function(a, b)
    return a.us > b.us
  end)
  local sys = {}
  for _, s in pairs(by_sys) do
    sys[#sys + 1] = s
  end
  table.sort(sys, function(a, b)
    return a.us > b.us
  end)
  return list, sys
end

---------------------------------------------------------------------------
-- what was not seen

-- Stacks not read, by why (dn_offcpu_missed: [4 * kind + why]).
local function lost_stacks(bpf)
  local missed = bpf:get_table("dn_offcpu_missed")
  local why = { collided = 0, map_full = 0, fault = 0, other = 0 }
  local names = { [0] = "collided", "map_full", "fault", "other" }
  local lost = 0
  for i = 0, 7 do
    local n = tonumber(missed:get(i))
    why[names[i % 4]] = why[names[i % 4]] + n
    lost = lost + n
  end
  return lost, why
end

-- The report's counts of what it could not see.
local function unseen(t, report)
  report.lost_stacks, report.lost_stacks_why = lost_stacks(t.bpf)
  -- switches the kernel did not run the program for (another BPF program
  -- or a map operation held that CPU): their blocks are missing
  report.missed_switches = t.bpf.m:misses(t.program:has_flag("-DDN_SWITCH_RAW") and "raw_tracepoint__sched_switch"
    or "tracepoint__sched__sched_switch") or 0
  -- blocks that ended while tracing, and those of them whose entry could
  -- not be stored (the map full or busy): missing from the totals
  local seen = t.bpf:get_table("dn_offcpu_seen")
  report.blocks_seen = tonumber(seen:sum(0))
  report.lost_blocks = tonumber(seen:sum(1))
  -- blocks whose ending switch was not seen: their end found from the
  -- thread's CPU time (counted), or not (missing)
  report.recovered_blocks = tonumber(seen:sum(3))
  report.unended_blocks = tonumber(seen:sum(2))
  local reuse = t.engine:stats()
  report.kstack_reuse, report.ustack_reuse = reuse.kstack_reuse, reuse.ustack_reuse
  report.leaf_unwind = reuse.leaf_unwind
  report.unwind = reuse.unwind
  report.python_frames = reuse.python_frames
end

---------------------------------------------------------------------------
-- the report

--- The report of tracer t (the JSON contract of docs/offcpu.md).
--- Once the tracer stopped, the maps hold still: everything counts up to
--- then. Live, a block that ends between the reads of the two maps is in
--- neither.
function M.report(t)
  local now_ns = t.stopped_ns or core.monotonic_ns()
  local t0_ns = t:t0_ns()
  local threads, raw = seen_threads(t, now_ns, t0_ns)
  local comms = {}
  for tid, th in pairs(threads) do
    comms[tid] = th.comm
  end
  measure_threads(t, threads, raw)
  local min_ns, max_ns = (t.opts.min_us or 0) * 1000, (t.opts.max_us or math.huge) * 1000
  local list, sys = stacks_of(t, entries_of(t.bpf, now_ns, min_ns, max_ns), threads, comms)
  local report = { kind = "offcpu", duration_us = math.floor((now_ns - t0_ns) / 1000),
    threads = thread_list(t, threads), stacks = list, syscalls = sys }
  unseen(t, report)
  -- the files of the user frames, with their build-ids
  report.modules = t.resolver and t.resolver:files()
  -- blocks whose user stack stops short of the entry point
  if report.unwind then
    local n = 0
    for _, s in ipairs(list) do
      n = n + (s.frames[1] == "[truncated]" and s.count or 0)
    end
    report.truncated_stacks = n
  end
  report.sites = M.sites(list)
  report.verdict = M.verdict(report, t.opts.kernel_threads)
  return report
end

--- Off-CPU time per (thread, category, call site), largest first.
function M.sites(list)
  local acc, out = {}, {}
  for _, s in ipairs(list) do
    if s.category ~= "runqueue" then
      local site = stacks.frames.site(s) or (s.syscall ~= "" and s.syscall .. "()") or "?"
      local key = s.tid .. "|" .. s.category .. "|" .. site
      local e = acc[key]
      if not e then
        e = { tid = s.tid, comm = s.comm, category = s.category, site = site, us = 0, count = 0 }
        acc[key] = e
        out[#out + 1] = e
      end
      e.us = e.us + s.us
      e.count = e.count + s.count
    end
  end
  table.sort(out, function(a, b)
    return a.us > b.us
  end)
  return out
end

--- One plain sentence about the thread that waits the most. Kernel
--- threads (their idle waits fill a machine) are left out unless
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
    math.floor(100 * best / t.wall_us + 0.5), classify.DESCRIBE[cat] or cat, where)
end

---------------------------------------------------------------------------
-- figures (every sample)

-- The top blocking threads of per-thread totals (tid -> { pid, comm,
-- time_ns }), at most n, with their share of total.
local function top_threads(threads, total, n)
  local top = {}
  for tid, th in pairs(threads) do
    if th.time_ns > 0 then
      th.tid = tid
      top[#top + 1] = th
    end
  end
  table.sort(top, function(a, b)
    return a.time_ns > b.time_ns
  end)
  local out = {}
  for i = 1, math.min(n, #top) do
    local th = top[i]
    out[i] = { pid = th.pid, tid = th.tid, comm = th.comm, time_ms = util.round(th.time_ns / 1e6, 3),
      percentage = util.round(total > 0 and 100 * th.time_ns / total or 0, 2) }
  end
  return require("denet.json").array(out)
end

--- Off-CPU totals of tracer t so far, in the original denet's shape (the
--- monitor's aggregated.ebpf.offcpu): blocked time (run-queue waits
--- apart; blocks in progress count up to now), blocks that ended, their
--- mean, longest and shortest, per thread, and the threads that blocked
--- the most. Blocks are classified as report() classifies them.
function M.figures(t)
  local now_ns = t.stopped_ns or core.monotonic_ns()
  local threads, by_cat = {}, {}
  local total, events, ended, runq, maxns, minns = 0, 0, 0, 0, 0, nil
  for tid, v in t.bpf:get_table("dn_offcpu_threads"):items() do
    threads[tid] = { pid = v.tgid, comm = ffi.string(v.comm), time_ns = 0, events = 0, by_category = {} }
  end
  for _, e in ipairs(entries_of(t.bpf, now_ns, 0, math.huge)) do
    local cat = category_of(t, e.k)
    by_cat[cat] = (by_cat[cat] or 0) + e.total_ns
    if cat == "runqueue" then
      runq = runq + e.total_ns
    else
      -- (a block in progress is an event once it ends)
      local n = e.count - e.open
      total, events, maxns = total + e.total_ns, events + n, math.max(maxns, e.max_ns)
      ended = ended + e.total_ns - e.open_ns
      if e.min_ns then
        minns = math.min(minns or math.huge, e.min_ns)
      end
      local th = threads[e.k.tid]
      if th then
        th.time_ns, th.events = th.time_ns + e.total_ns, th.events + n
        th.by_category[cat] = (th.by_category[cat] or 0) + e.total_ns
      end
    end
  end
  local stats = {}
  for tid, th in pairs(threads) do
    if th.time_ns > 0 then
      stats[th.pid .. ":" .. tid] = { comm = th.comm, time_ns = th.time_ns, events = th.events,
        by_category = th.by_category }
    end
  end
  return {
    total_time_ns = total, total_events = events, avg_time_ns = events > 0 and math.floor(ended / events) or 0,
    max_time_ns = maxns, min_time_ns = minns or 0, runqueue_time_ns = runq, by_category_ns = by_cat,
    thread_stats = stats, top_blocking_threads = top_threads(threads, total, 5),
  }
end

return M
