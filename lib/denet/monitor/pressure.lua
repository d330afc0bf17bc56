-- denet.monitor.pressure: pressure stall information (PSI) for a process
-- tree: CPU, memory and I/O.
--
-- The tree's own figures when its root is in a cgroup of its own: not the
-- root cgroup, and no process outside the tree in it or below it. Then
-- that cgroup's cpu.pressure, memory.pressure and io.pressure from the
-- cgroup v2 hierarchy (mounted at /sys/fs/cgroup, or at
-- /sys/fs/cgroup/unified on a hybrid system). Else the system's
-- /proc/pressure/*: a figure of the whole machine. Which one is in the
-- metadata record (capabilities.psi.source).
--
--   local p = pressure.open(root_pid, in_tree)   -- in_tree(pid) -> bool
--   p.source, p.cgroup, p.reason
--   p:read() -> { psi_cpu = {...}, psi_mem = {...}, psi_io = {...} }
local core = require("denet.core")

local M = {}

-- record field -> PSI file
M.FILES = { { "psi_cpu", "cpu" }, { "psi_mem", "memory" }, { "psi_io", "io" } }

--- One PSI file's text -> { some_avg10, full_avg10 (percent of the last
--- 10 s), some_total_us, full_total_us (stall time since boot or the
--- cgroup's creation) }, or nil. (Before 5.13 cpu.pressure has no `full`
--- line: 0 then.)
function M.parse(text)
  if type(text) ~= "string" then
    return nil
  end
  local r = {}
  for kind in ("some full"):gmatch("%S+") do
    local line = text:match("%f[%w]" .. kind .. " ([^\n]*)")
    local avg, total = line and tonumber(line:match("avg10=([%d.]+)")), line and tonumber(line:match("total=(%d+)"))
    if kind == "some" and not (avg and total) then
      return nil
    end
    r[kind .. "_avg10"], r[kind .. "_total_us"] = avg or 0, total or 0
  end
  return r
end

--- Where the cgroup v2 hierarchy is mounted (nil: none), from mountinfo's
--- text.
function M.cgroup2_root(mountinfo)
  for line in (mountinfo or ""):gmatch("[^\n]+") do
    local mnt, fstype = line:match("^%S+ %S+ %S+ %S+ (%S+) .- %- (%S+) ")
    if fstype == "cgroup2" then
      return mnt
    end
  end
end

--- The cgroup v2 path of pid ("/user.slice/x.scope"), from its
--- /proc/PID/cgroup text (the "0::" line).
function M.cgroup_of(text)
  return (text or ""):match("%f[^\n%z]0::([^\n]+)")
end

-- The pids in cgroup directory dir and below it (depth-limited), or nil
-- when it cannot be read.
local function members(dir, out, depth)
  local procs = core.read_file(dir .. "/cgroup.procs", 1048576)
  if not procs then
    return nil
  end
  for pid in procs:gmatch("%d+") do
    out[#out + 1] = tonumber(pid)
  end
  if depth < 8 then
    for _, name in ipairs(core.list_dir(dir) or {}) do
      local sub = dir .. "/" .. name
      if not name:find("%.") and core.read_file(sub .. "/cgroup.procs", 1) then
        if not members(sub, out, depth + 1) then
          return nil
        end
      end
    end
  end
  return out
end

--- Is cgroup dir the tree's own? (every process in it and below it is in
--- the tree). Returns true, or false and why not.
function M.owned(dir, in_tree)
  local pids = members(dir, {}, 0)
  if not pids then
    return false, "its cgroup.procs cannot be read"
  end
  for _, pid in ipairs(pids) do
    if not in_tree(pid) then
      return false, string.format("process %d, outside the tree, shares its cgroup", pid)
    end
  end
  return true
end

local Reader = {}
Reader.__index = Reader

--- The pressure source of the tree whose root is pid; in_tree(pid) says
--- whether a process belongs to it. opts.proc_root: where the system's
--- files are (default /proc/pressure). Returns the reader, or nil and why
--- when the kernel has no PSI.
function M.open(pid, in_tree, opts)
  opts = opts or {}
  local sys = opts.proc_root or "/proc/pressure"
  local self = setmetatable({ paths = {}, source = "system" }, Reader)
  local root = M.cgroup2_root(core.read_file("/proc/self/mountinfo", 1048576))
  local cg = M.cgroup_of(core.read_file("/proc/" .. pid .. "/cgroup"))
  local why
  if not root then
    why = "no cgroup v2 hierarchy is mounted"
  elseif not cg then
    why = "the process is in no cgroup v2 group"
  elseif cg == "/" then
    why = "the process is in the root cgroup"
  else
    local dir = root .. cg
    local own, reason = M.owned(dir, in_tree)
    if own and core.stat(dir .. "/cpu.pressure") then
      self.source, self.cgroup, self.dir = "cgroup", cg, dir
    else
      why = reason or "its cgroup has no pressure files"
    end
  end
  for _, f in ipairs(M.FILES) do
    self.paths[f[1]] = self.dir and (self.dir .. "/" .. f[2] .. ".pressure") or (sys .. "/" .. f[2])
  end
  if self.source == "system" and not core.stat(self.paths.psi_mem) then
    return nil, "the kernel does not expose pressure stall information (" .. sys .. ")"
  end
  self.reason = self.source == "system" and ("the system's figures: " .. why) or nil
  return self
end

--- The figures now: { psi_cpu, psi_mem, psi_io } (those that could be
--- read).
function Reader:read()
  local r = {}
  for _, f in ipairs(M.FILES) do
    r[f[1]] = M.parse(core.read_file(self.paths[f[1]]))
  end
  return r
end

--- The metadata's capabilities.psi entry.
function Reader:capability()
  return { system = true, per_process = self.source == "cgroup", source = self.source, cgroup = self.cgroup,
    reason = self.reason }
end

return M
