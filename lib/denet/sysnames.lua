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

return M
