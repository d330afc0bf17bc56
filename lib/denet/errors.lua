-- denet.errors: the two kinds of failure a user sees.
--
-- A *user error* is something the user can act on (no such PID, no
-- privileges, missing headers, a bad flag): the host prints it as one line,
-- "denet: <what failed>: <why>; <how to fix>", and exits with its code
-- (2 unless said otherwise), without a traceback. Anything else raised is a
-- script bug and is printed as file:line with a traceback (exit 1).
local core = require("denet.core")

local M = {}

-- Build a user error. code defaults to 2. The host builds the same value
-- for its own refusals (dn_vm_user_error), so tostring gives the message.
function M.user(message, code)
  return core.user_error(message, code or 2)
end

-- Raise a user error.
function M.raise(message, code)
  error(M.user(message, code), 0)
end

-- A script-level failure that already names its place (a BPF compile
-- error with clang's diagnostics): printed as is, exit 1, no traceback.
function M.script(message)
  local e = core.user_error(message, 1)
  e.plain = true
  error(e, 0)
end

function M.is_user(e)
  return type(e) == "table" and e.denet_error == true
end

-- True for the error a SIGINT/SIGTERM raises in running Lua code.
function M.is_interrupt(e)
  return type(e) == "table" and e.interrupted == true
end

return M
