-- denet.monitor.counters: perf_event_open counters that follow a process
-- tree, read at every sample.
--
-- Each counter is opened on the tasks the tree has when monitoring begins
-- (a command held before exec: its one task; an attached process: each of
-- its threads, and those of its descendants) with `inherit`: every task
-- they create from then on counts into the same counter, and a task that
-- exits adds its count on (the kernel sums them on read). So the tree's
-- counts are exact, short-lived children included, with no work per fork.
--
--   local c = counters.open(tids, { threads_only = false, hardware = "auto" })
--   local d = c:delta()        -- { sw = {...}, hw = {...} or nil } since the last call
--   local t = c:totals()       -- since open
--   c:close()
local core = require("denet.core")

local M = {}

local SOFTWARE, HARDWARE = 1, 0

--- The software counters: every kernel has them. (field, perf config)
M.SOFTWARE = {
  { "task_clock_ns", 1 },       -- PERF_COUNT_SW_TASK_CLOCK
  { "page_faults_minor", 5 },   -- PERF_COUNT_SW_PAGE_FAULTS_MIN
  { "page_faults_major", 6 },   -- PERF_COUNT_SW_PAGE_FAULTS_MAJ
  { "context_switches", 3 },    -- PERF_COUNT_SW_CONTEXT_SWITCHES
  { "cpu_migrations", 4 },      -- PERF_COUNT_SW_CPU_MIGRATIONS
}

--- The hardware counters, under the original denet's names (its `perf`
--- record); cycles and instructions are needed, the rest where the PMU
--- has them.
M.HARDWARE = {
  { "cycles", 0 },              -- PERF_COUNT_HW_CPU_CYCLES
  { "instructions", 1 },        -- PERF_COUNT_HW_INSTRUCTIONS
  { "cache_refs", 2 },          -- PERF_COUNT_HW_CACHE_REFERENCES
  { "cache_misses", 3 },        -- PERF_COUNT_HW_CACHE_MISSES
  { "branch_misses", 5 },       -- PERF_COUNT_HW_BRANCH_MISSES
  { "stalled_backend", 8 },     -- PERF_COUNT_HW_STALLED_CYCLES_BACKEND
}

-- at most this many tasks get counters of their own (an attached tree's
-- threads); the rest are said once
M.MAX_TASKS = 512

local ENOENT, EOPNOTSUPP, EACCES, EPERM, ENODEV = 2, 95, 13, 1, 19

--- Why a hardware counter could not be opened (errno), in a user's words.
function M.why(errno)
  if errno == ENOENT or errno == EOPNOTSUPP or errno == ENODEV then
    return "this machine has no hardware performance counters (no PMU: a virtual machine without a virtual PMU?)"
  elseif errno == EACCES or errno == EPERM then
    local paranoid = core.read_file("/proc/sys/kernel/perf_event_paranoid") or "?"
    return string.format("permission denied (kernel.perf_event_paranoid=%s; needs CAP_PERFMON or root)",
      paranoid:gsub("%s+$", ""))
  end
  return "perf_event_open failed: " .. core.strerror(errno or 0)
end

local Set = {}
Set.__index = Set

-- Open counter (type, config) on every task; the fds, or nil, errno.
local function open_all(tids, ptype, config, flags)
  local fds = {}
  for _, tid in ipairs(tids) do
    local fd, _, errno = core.perf_open(tid, ptype, config, flags)
    if fd then
      fds[#fds + 1] = fd
    elseif tid == tids[1] then
      -- (a later task may have exited since it was listed)
      return nil, errno
    end
  end
  return fds
end

--- Counters on tasks `tids` (the first is the tree's root). opts:
--- threads_only (inherit to new threads only, not to child processes:
--- --exclude-children), hardware (false: software counters only).
--- Returns the set, or nil and why when even the software counters could
--- not be opened. set.hw_refused says why there are no hardware counters.
function M.open(tids, opts)
  opts = opts or {}
  local flags = { inherit = true, inherit_thread = opts.threads_only or false }
  if #tids > M.MAX_TASKS then
    require("denet.util").note_once(string.format("the tree has %d threads: performance counters follow the "
      .. "first %d and what they start", #tids, M.MAX_TASKS))
    local cut = {}
    for i = 1, M.MAX_TASKS do
      cut[i] = tids[i]
    end
    tids = cut
  end
  local self = setmetatable({ list = {}, groups = {}, members = {}, last = {}, hw = false, buf = {} }, Set)
  -- the software counters: one group per task, read in one syscall
  for _, tid in ipairs(tids) do
    local ok, errno = self:_open_group(tid, flags)
    if not ok and tid == tids[1] then
      self:close()
      return nil, "performance counters: " .. M.why(errno)
    end
  end
  if opts.hardware ~= false then
    for i, c in ipairs(M.HARDWARE) do
      local fds, errno = open_all(tids, HARDWARE, c[2], flags)
      if fds then
        self.list[#self.list + 1] = { name = c[1], fds = fds, kind = "hw" }
        self.hw = true
      elseif i <= 2 then
        -- without cycles and instructions the others say little
        self.hw_refused = M.why(errno)
        break
      end
    end
  end
  return self
end

-- The software counters' group on task tid: true, or nil and errno.
function Set:_open_group(tid, flags)
  local lf = { inherit = flags.inherit, inherit_thread = flags.inherit_thread, leader = true }
  local leader, _, errno = core.perf_open(tid, SOFTWARE, M.SOFTWARE[1][2], lf)
  if not leader then
    return nil, errno
  end
  local mf = { inherit = flags.inherit, inherit_thread = flags.inherit_thread, group = leader }
  local fds = {}
  for i = 2, #M.SOFTWARE do
    local fd
    fd, _, errno = core.perf_open(tid, SOFTWARE, M.SOFTWARE[i][2], mf)
    if not fd then
      core.perf_close(leader)
      for _, f in ipairs(fds) do
        core.perf_close(f)
      end
      return nil, errno
    end
    fds[#fds + 1] = fd
  end
  self.groups[#self.groups + 1] = leader
  for _, f in ipairs(fds) do
    self.members[#self.members + 1] = f
  end
  return true
end

-- The count of counter c over its tasks, scaled where the kernel
-- multiplexed it (ran part of the time it was enabled).
local function count(c)
  local sum = 0
  for _, fd in ipairs(c.fds) do
    local v, enabled, running = core.perf_read(fd)
    if v then
      if running and running > 0 and enabled > running then
        v = v * enabled / running
      end
      sum = sum + v
    end
  end
  return math.floor(sum + 0.5)
end

--- Every counter since open: { sw = { name = n }, hw = { ... } or nil }.
function Set:totals()
  local t = { sw = {}, hw = self.hw and {} or nil }
  local sum, buf = {}, self.buf
  for i = 1, #M.SOFTWARE do
    sum[i] = 0
  end
  -- (software counters are never multiplexed: the counts are whole)
  for _, fd in ipairs(self.groups) do
    local n = core.perf_read_group(fd, buf)
    for i = 1, math.min(n or 0, #M.SOFTWARE) do
      sum[i] = sum[i] + buf[i]
    end
  end
  for i, c in ipairs(M.SOFTWARE) do
    t.sw[c[1]] = math.floor(sum[i] + 0.5)
  end
  for _, c in ipairs(self.list) do
    t[c.kind][c.name] = count(c)
  end
  return t
end

--- Every counter since the last call (since open at the first).
function Set:delta()
  local t = self:totals()
  local d = { sw = {}, hw = t.hw and {} or nil }
  for _, kind in ipairs({ "sw", "hw" }) do
    for k, v in pairs(t[kind] or {}) do
      local last = self.last[k] or 0
      d[kind][k] = math.max(0, v - last)
      self.last[k] = v
    end
  end
  return d
end

function Set:close()
  for _, c in ipairs(self.list) do
    for _, fd in ipairs(c.fds) do
      core.perf_close(fd)
    end
  end
  for _, fd in ipairs(self.members) do
    core.perf_close(fd)
  end
  for _, fd in ipairs(self.groups) do
    core.perf_close(fd)
  end
  self.list, self.groups, self.members = {}, {}, {}
end

--- The tasks of processes `pids` (each one's threads, from
--- /proc/PID/task), the first pid's first.
function M.tasks_of(pids)
  local tids = {}
  for _, pid in ipairs(pids) do
    local list = core.list_dir("/proc/" .. pid .. "/task")
    if list and #list > 0 then
      table.sort(list, function(a, b)
        return (tonumber(a) or 0) < (tonumber(b) or 0)
      end)
      tids[#tids + 1] = pid
      for _, name in ipairs(list) do
        local tid = tonumber(name)
        if tid and tid ~= pid then
          tids[#tids + 1] = tid
        end
      end
    else
      tids[#tids + 1] = pid
    end
  end
  return tids
end

return M
