-- denet.cli: the command line. host/main.c calls main(argv) and exits with
-- what it returns; errors raised here are reported by the host (user
-- errors as one line, exit 2).
local core = require("denet.core")
local errors = require("denet.errors")

local M = {}

local USAGE = [[
usage: denet <command> [args]

commands:
  [options] run [options] -- CMD [ARGS...]
                               monitor a command and all its descendants (see denet run --help)
  [options] attach PID         monitor a running process and its descendants
  stats FILE [--json]          recompute the summary of a JSONL file
  script NAME|FILE [args...]   run a built-in script or a Lua file; `arg` holds its arguments
  doctor                       check whether BPF can work here, and how to fix what is missing
  version                      print versions of denet, LuaJIT and libbcc
  help                         this text

Built-in scripts live in ]] .. core.root .. [[/scripts.
]]

local function script_path(name)
  local function is_file(p)
    local f = io.open(p, "r")
    if not f then
      return false
    end
    -- a directory opens but cannot be read
    local ok = f:read(0) ~= nil or f:read("*a") ~= nil
    f:close()
    return ok
  end
  if name:find("/") or name:match("%.lua$") then
    if is_file(name) then
      return name
    end
    return nil, string.format("cannot open script %s: no such file", name)
  end
  for _, dir in ipairs({ "scripts", "scripts/examples" }) do
    local builtin = string.format("%s/%s/%s.lua", core.root, dir, name)
    if is_file(builtin) then
      return builtin
    end
  end
  if is_file(name) then
    return name
  end
  return nil, string.format("no script named '%s': not a file and not a built-in in %s/scripts "
    .. "(give a path such as ./%s.lua)", name, core.root, name)
end

--- Run the Lua file at path with arguments args (a list); `arg` is set as
--- lua.c sets it. Returns the exit code the script chose (a number it
--- returns, else 0).
function M.run_script(path, args)
  local chunk, err = loadfile(path)
  if not chunk then
    -- a syntax error is a script bug: file:line: message, exit 1
    error(err, 0)
  end
  local a = { [0] = path }
  for i, v in ipairs(args) do
    a[i] = v
  end
  _G.arg = a
  local rc = chunk(unpack(args))
  if type(rc) == "number" then
    return rc
  end
  return 0
end

local function version()
  print(string.format("denet %s (%s, libbcc %s)", core.version, jit and jit.version or _VERSION,
    core.libbcc_version))
  return 0
end

-- busted, run inside denet so specs see the real host and library
local function busted(args)
  _G.arg = { [0] = "busted" }
  for i, v in ipairs(args) do
    _G.arg[i] = v
  end
  -- called from a chunk without a file name, busted exits with its result
  -- through os.exit instead of raising (its Lua 5.1 compatibility path)
  assert(loadstring("require('busted.runner')({ standalone = false })", "=busted"))()
  return 0
end

local COMMANDS = {
  script = function(args)
    local name = table.remove(args, 1)
    if not name then
      errors.raise("script: missing the script name or file (usage: denet script NAME|FILE [args...])")
    end
    local path, err = script_path(name)
    if not path then
      errors.raise(err)
    end
    return M.run_script(path, args)
  end,
  doctor = function(args)
    return require("denet.doctor").main(args)
  end,
  version = version,
  ["--version"] = version,
  help = function()
    io.write(USAGE)
    return 0
  end,
  busted = busted,
}

-- the monitor's front doors; its options may also come first
local function monitor(args)
  return M.run_script(core.root .. "/scripts/monitor.lua", args)
end
COMMANDS["-h"] = COMMANDS.help
COMMANDS["--help"] = COMMANDS.help

function M.main(argv)
  local args = {}
  for i = 1, #argv do
    args[i] = argv[i]
  end
  local cmd = args[1]
  if not cmd then
    io.stderr:write(USAGE)
    return 2
  end
  if cmd == "run" or cmd == "attach" or cmd == "stats" or (cmd:sub(1, 1) == "-" and not COMMANDS[cmd]) then
    return monitor(args)
  end
  table.remove(args, 1)
  local f = COMMANDS[cmd]
  if not f then
    errors.raise(string.format("unknown command '%s' (try: denet help)", cmd))
  end
  return f(args)
end

return M
