-- bcc.vendor.helpers: the globals and string/table/os additions scripts
-- written for bcc's Lua binding expect once they require "bcc":
-- string.starts/ends/lstrip/escape/split, "fmt" % args, table.count/
-- bsearch/join/build/values/tuples, os.exists/spawn, and the globals
-- `log` (log.info(fmt, ...) on stderr when log.enabled) and `class`.
--
-- Unlike bcc's, the global table is not made strict: reading an
-- undeclared global gives nil, as in plain Lua.

function string.starts(s, prefix)
  return s:sub(1, #prefix) == prefix
end

function string.lstrip(s, prefix)
  return s:sub(#prefix + 1)
end

function string.ends(s, suffix)
  return suffix == "" or s:sub(-#suffix) == suffix
end

function string.escape(s)
  return (s:gsub("[%-%.%+%[%]%(%)%$%^%%%?%*]", "%%%0"))
end

--- split s at each match of sep (a pattern, default "%s+"; plain: a plain
--- string), at most n pieces; empty trailing pieces are dropped.
function string.split(s, sep, plain, n)
  sep = sep or "%s+"
  if sep == "" then
    return { s }
  end
  local out, pos = {}, 1
  while true do
    local a, b = s:find(sep, pos, plain)
    if not a or (n and #out == n - 1) then
      local rest = s:sub(pos)
      if rest ~= "" then
        out[#out + 1] = rest
      end
      return out
    end
    out[#out + 1] = s:sub(pos, a - 1)
    pos = b + 1
  end
end

function table.count(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n
end

--- Index of value in the sorted list (mkval maps an element to what is
--- compared), or nil.
function table.bsearch(list, value, mkval)
  local lo, hi = 1, #list
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local v = list[mid]
    if mkval then
      v = mkval(v)
    end
    if v < value then
      lo = mid + 1
    elseif v > value then
      hi = mid - 1
    else
      return mid
    end
  end
  return nil
end

--- a followed by b, as a new list (a itself when b is empty).
function table.join(a, b)
  assert(a, "table.join: the first list is missing")
  if b == nil or #b == 0 then
    return a
  end
  local out = {}
  for _, v in ipairs(a) do
    out[#out + 1] = v
  end
  for _, v in ipairs(b) do
    out[#out + 1] = v
  end
  return out
end

--- The list of build(values) for each round of the iterator.
function table.build(iter, build)
  local out = {}
  while true do
    local vals = { iter() }
    if vals[1] == nil then
      return out
    end
    out[#out + 1] = build and build(vals) or vals
  end
end

function table.values(t)
  local out = {}
  for _, v in pairs(t) do
    out[#out + 1] = v
  end
  return out
end

--- Iterate over a list of pairs { {a, b}, ... } as a, b.
function table.tuples(t)
  local i = 0
  return function()
    i = i + 1
    local p = t[i]
    if p then
      return p[1], p[2]
    end
  end
end

-- "fmt" % value and "fmt" % { values }
getmetatable("").__mod = function(fmt, args)
  if args == nil then
    return fmt
  elseif type(args) == "table" then
    return string.format(fmt, unpack(args))
  end
  return string.format(fmt, args)
end

function os.exists(path)
  local f = io.open(path, "r")
  if f then
    f:close()
    return true
  end
  return false
end

--- Run a shell command (string.format(...)) and return its output.
function os.spawn(...)
  local p = assert(io.popen(string.format(...)))
  local out = p:read("*a")
  p:close()
  return out
end

if rawget(_G, "log") == nil then
  local log = { enabled = false }
  function log.info(fmt, ...)
    if not log.enabled then
      return
    end
    local info = debug.getinfo(2, "Sl")
    io.stderr:write(string.format("[%s] %s:%d: %s\n", os.date("%H:%M:%S"), info.short_src, info.currentline or 0,
      string.format(fmt, ...)))
  end
  rawset(_G, "log", log)
end

if rawget(_G, "class") == nil then
  rawset(_G, "class", require("bcc.vendor.middleclass"))
end
