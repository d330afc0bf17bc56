-- denet.procfs: /proc readers for the monitor, as typed data.
--
-- The C side (host/dn_procfs.c) keeps /proc/PID files open per watched
-- process and fills an array of struct dn_psample per sample (declared
-- once, for C and the FFI, in bpf-src/dn_records.h); this module views it.
local ffi = require("ffi")
local core = require("denet.core")

local M = {}

-- struct dn_psample: declared once, in bpf-src/dn_records.h
require("denet.records")

M.GONE, M.IO, M.PSS, M.CTXSW, M.SKIPPED = 1, 2, 4, 8, 16
M.CLK_TCK = core.clk_tck()
M.PAGE_KB = core.page_size() / 1024

local sample_arr = ffi.typeof("struct dn_psample[?]")

local Table = {}
Table.__index = Table

--- A table of watched processes.
function M.new()
  -- order mirrors the C table's sampling order (insertion order)
  return setmetatable({ t = core.ptab_new(), cap = 0, buf = nil, order = {}, index = {} }, Table)
end

--- Watch pid: true, io_readable | nil, message, errno.
function Table:add(pid)
  local ok, a, b = self.t:add(pid)
  if ok and not self.index[pid] then
    self.order[#self.order + 1] = pid
    self.index[pid] = true
  end
  return ok, a, b
end

function Table:remove(pid)
  self.t:remove(pid)
  if self.index[pid] then
    self.index[pid] = nil
    for i, p in ipairs(self.order) do
      if p == pid then
        table.remove(self.order, i)
        break
      end
    end
  end
end

function Table:count()
  return self.t:count()
end

--- Read the watched processes, in the order they were added. Returns the
--- sample array (0-based) and its length; entries of processes that have
--- gone carry flags GONE. skip(pid) -> true leaves a process unread this
--- time (flags SKIPPED).
function Table:sample(want_pss, want_status, skip)
  local n = self.t:count()
  if n > self.cap then
    self.cap = math.max(64, n * 2)
    self.buf = sample_arr(self.cap)
    self.mask = ffi.new("uint8_t[?]", self.cap)
  end
  if n == 0 then
    return self.buf, 0
  end
  local mask
  if skip then
    mask = self.mask
    local order = self.order
    for i = 1, #order do
      mask[i - 1] = skip(order[i]) and 1 or 0
    end
  end
  return self.buf, self.t:sample(self.buf, self.cap, want_pss or false, want_status or false, mask)
end

--- The command line of pid as a list, or nil (kernel threads, gone).
function M.cmdline(pid)
  local s = core.read_file("/proc/" .. pid .. "/cmdline", 65536)
  if not s or s == "" then
    return nil
  end
  local out = {}
  for a in s:gmatch("([^%z]*)%z") do
    out[#out + 1] = a
  end
  return out
end

--- The executable of pid (readlink of /proc/PID/exe), or nil.
function M.exe(pid)
  return (core.readlink("/proc/" .. tonumber(pid) .. "/exe"))
end

--- Children of pid right now, from /proc/PID/task/*/children (used when
--- BPF is not available to report forks).
function M.children(pid)
  local out = {}
  for _, tid in ipairs(core.list_dir("/proc/" .. tonumber(pid) .. "/task") or {}) do
    local s = core.read_file(string.format("/proc/%d/task/%s/children", pid, tid))
    if s then
      for c in s:gmatch("%d+") do
        out[#out + 1] = tonumber(c)
      end
    end
  end
  return out
end

--- Every process descending from root now (not root itself), by walking
--- the ppid links of all processes once.
function M.descendants(root)
  local kids = {}
  for _, pid in ipairs(core.list_pids()) do
    local ppid = core.read_stat(pid)
    if ppid then
      kids[ppid] = kids[ppid] or {}
      table.insert(kids[ppid], pid)
    end
  end
  local out, queue = {}, { root }
  while #queue > 0 do
    local p = table.remove(queue)
    for _, c in ipairs(kids[p] or {}) do
      out[#out + 1] = c
      queue[#queue + 1] = c
    end
  end
  return out
end

return M
