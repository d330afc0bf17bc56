-- denet.sysnames: syscall numbers to names for this machine, read from the
-- installed headers (never a table in denet); unknown numbers are
-- "syscall_<nr>".
local core = require("denet.core")

local M = {}

local names

local HEADERS = {
  "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
  "/usr/include/asm/unistd_64.h",
  "/usr/include/aarch64-linux-gnu/asm/unistd.h",
  "/usr/include/asm-generic/unistd.h",
}

local function load()
  names = {}
  for _, path in ipairs(HEADERS) do
    local text = core.read_file(path, 1048576)
    if text then
      for name, nr in text:gmatch("#define%s+__NR_([%w_]+)%s+(%d+)") do
        names[tonumber(nr)] = names[tonumber(nr)] or name
      end
      if next(names) then
        break
      end
    end
  end
end

--- The name of syscall nr ("syscall_<nr>" when unknown).
function M.name(nr)
  if not names then
    load()
  end
  return names[nr] or ("syscall_" .. tostring(nr))
end

--- The number of a syscall by name, or nil.
function M.number(name)
  if not names then
    load()
  end
  for nr, n in pairs(names) do
    if n == name then
      return nr
    end
  end
  return nil
end

local errnos

local ERRNO_HEADERS = { "/usr/include/asm-generic/errno-base.h", "/usr/include/asm-generic/errno.h" }

local function load_errnos()
  errnos = { name = {}, number = {} }
  for _, path in ipairs(ERRNO_HEADERS) do
    local text = core.read_file(path, 1048576) or ""
    for name, nr in text:gmatch("#define%s+(E[%u%d]+)%s+(%d+)") do
      nr = tonumber(nr)
      errnos.name[nr] = errnos.name[nr] or name
      errnos.number[name] = nr
    end
  end
end

--- The symbolic name of errno n ("ENOENT"; "E<n>" when unknown).
function M.errno_name(n)
  if not errnos then
    load_errnos()
  end
  return errnos.name[n] or ("E" .. tostring(n))
end

--- The number of an errno given by name ("ENOENT") or number ("2"), or nil.
function M.errno_number(s)
  if not errnos then
    load_errnos()
  end
  return tonumber(s) or errnos.number[tostring(s):upper()]
end

--- Every known syscall name, sorted.
function M.all()
  if not names then
    load()
  end
  local list = {}
  for _, n in pairs(names) do
    list[#list + 1] = n
  end
  table.sort(list)
  return list
end

return M
