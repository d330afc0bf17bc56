-- bcc.sym: symbol caches and path/symbol resolution for bcc scripts.
--
--   local cache = BPF.SymbolCache(pid)   -- nil or -1: the kernel
--   local name, offset = cache:resolve(addr)   -- "[unknown]", 0 when none
--
-- Also the older interface some bcc examples use: sym.ProcSymbols:new(pid)
-- and sym.KSymbols:new(), with :lookup(addr) -> "name" and :refresh().
local syms = require("denet.syms")

local M = {}

local function kernel_cache()
  local ks = syms.kernel_table()
  return {
    resolve = function(_, addr)
      local name, off = ks:resolve(addr)
      if not name then
        return "[unknown]", 0x0
      end
      return name, off
    end,
    refresh = function() end,
  }
end

local function user_cache(pid)
  local maps = syms.maps(pid)
  local c = {}
  function c:resolve(addr)
    if not maps then
      return "[unknown]", 0x0
    end
    local name, off = maps:resolve(addr)
    if not name then
      return "[unknown]", 0x0
    end
    return name, off
  end
  -- mappings change (dlopen, exec): take them again
  function c:refresh()
    maps = syms.maps(pid) or maps
  end
  return c
end

--- A cache resolving addresses of process pid (nil or -1: the kernel).
function M.create_cache(pid)
  if pid == nil or pid < 0 then
    return kernel_cache()
  end
  return user_cache(pid)
end

--- module (a path, a library name such as "c", or a command) and symname
--- or addr (an ELF address) -> the file's path and the file offset to
--- probe (plus sym_off). Raises naming what is missing.
function M.check_path_symbol(module, symname, addr, pid, sym_off)
  local path, off = syms.resolve_symname(module, symname, pid or -1, symname == nil and addr or nil)
  if not path then
    error(off, 0)
  end
  return path, off + (sym_off or 0)
end

local function symbols(cache)
  return {
    lookup = function(_, addr)
      return (cache:resolve(addr))
    end,
    refresh = function()
      cache:refresh()
    end,
  }
end

M.ProcSymbols = { new = function(_, pid)
  return symbols(M.create_cache(pid))
end }
M.KSymbols = { new = function()
  return symbols(M.create_cache(-1))
end }

return M
