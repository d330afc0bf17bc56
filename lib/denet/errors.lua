-- denet.errors: the two kinds of failure a user sees.
--
-- A *user error* is something the user can act on (no such PID, no
-- privileges, missing headers, a bad flag): the host prints it as one line,
-- "denet: <what failed>: <why>; <how to fix>", and exits with its code
-- (2 unless said otherwise), without a traceback. Anything else raised is a
-- script bug and is printed as file:line with a traceback (exit 1).
--
-- Error values are tables that behave as their text: tostring(e),
-- "x" .. e and e:match(...) all see "file:line: message", where file:line
-- is the place in the user's own script or plugin that made the failing
-- call (none when the call came from denet's own files).
local core = require("denet.core")

local M = {}

-- Chunk sources ("@path") of the user's scripts and plugins, as loaded by
-- denet.plugins: the places an error can be said to come from.
M.user_sources = {}

-- file:line of the innermost caller in a user's script or plugin, or nil
-- (a call from denet's own files, a test runner, the REPL).
function M.where(level)
  level = level or 2
  while true do
    local info = debug.getinfo(level + 1, "Sl")
    if not info then
      return nil
    end
    if M.user_sources[info.source] and info.currentline and info.currentline > 0 then
      return string.format("%s:%d", info.short_src, info.currentline)
    end
    level = level + 1
  end
end

-- Build a user error. code defaults to 2; errno, when the failure is the
-- system's (a file or command not found, a process gone), travels with it
-- to programs that drive denet (the Python binding raises the matching
-- OSError). The host builds the same value for its own refusals
-- (dn_vm_user_error), so tostring gives the message.
function M.user(message, code, errno)
  local e = core.user_error(message, code or 2)
  e.where = M.where(2)
  e.errno = errno
  return e
end

-- Raise a user error.
function M.raise(message, code, errno)
  error(M.user(message, code, errno), 0)
end

-- A script-level failure that already names its place (a BPF compile
-- error with clang's diagnostics): printed as is, exit 1, no traceback.
function M.script(message)
  local e = core.user_error(message, 1)
  e.plain = true
  error(e, 0)
end

function M.is_user(e)
  return type(e) == "table" and rawget(e, "denet_error") == true
end

-- True for the error a SIGINT/SIGTERM raises in running code.
function M.is_interrupt(e)
  return type(e) == "table" and rawget(e, "interrupted") == true
end

-- The text of any error value.
function M.text(e)
  if type(e) == "table" and getmetatable(e) and getmetatable(e).__tostring then
    return tostring(e)
  elseif type(e) == "table" then
    return tostring(rawget(e, "message") or e[1] or "error")
  end
  return tostring(e)
end

--- A call a script got wrong (a missing or unknown option): one line,
--- "<file:line>: fname: message", exit 1, no traceback.
function M.bad_call(fname, message)
  local where = M.where(2)
  M.script(string.format("%s%s: %s", where and (where .. ": ") or "", fname, message))
end

--- Refuse an option table with a key `fname` does not know, so a
--- misspelt option never goes silently unused:
--- "<file:line>: fname: unknown option 'k' (known: a, b, c)".
--- known: a list of names.
function M.check_opts(fname, opts, known)
  if opts == nil then
    return
  end
  if type(opts) ~= "table" then
    M.bad_call(fname, string.format("options must be a table, not a %s", type(opts)))
  end
  local set = known.set
  if not set then
    set = {}
    for _, k in ipairs(known) do
      set[k] = true
    end
    known.set = set
  end
  for k in pairs(opts) do
    if not set[k] then
      local names = {}
      for _, n in ipairs(known) do
        names[#names + 1] = n
      end
      table.sort(names)
      M.bad_call(fname, string.format("unknown option '%s' (known: %s)", tostring(k), table.concat(names, ", ")))
    end
  end
end

return M
