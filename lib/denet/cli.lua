-- denet.cli: the command line. host/main.c calls main(argv) and exits with
-- what it returns; errors raised here are reported by the host (user
-- errors as one line, exit 2).
local core = require("denet.core")
local errors = require("denet.errors")

local M = {}

-- The subcommands, declared: the usage text and the man page come from here.
M.COMMANDS = {
  { "[options] run [options] -- CMD [ARGS...]", "monitor a command and all its descendants (see denet run --help)" },
  { "[options] attach PID", "monitor a running process and its descendants" },
  { "stats FILE [--json] [--html OUT]", "recompute the summary of a JSONL file (or chart it)" },
  { "export FILE --openmetrics", "a recorded run as OpenMetrics, for Prometheus's backfill" },
  { "script NAME|FILE [args...]", "run a built-in script, a plugin or a Lua file (see denet list)" },
  { "list", "the scripts and plugins on the search path, by category" },
  { "info NAME", "what a script does, its arguments and an example" },
  { "repl [-p PID | -- CMD]", "an interactive Lua console with denet loaded" },
  { "doctor", "check whether BPF can work here, and how to fix what is missing" },
  { "cache ls|clear", "the compiled BPF programs kept for a fast start" },
  { "version", "print versions of denet, LuaJIT and libbcc" },
  { "help", "this text" },
}

M.CACHE_NOTE = "Compiled BPF programs are kept in /var/cache/denet (root) or ~/.cache/denet and loaded "
  .. "without the compiler when the program, its flags, the kernel and libbcc are the same; --no-cache "
  .. "(anywhere before --) compiles afresh."

M.SEARCH_NOTE = "Scripts named without a path are the built-ins (" .. core.root .. "/scripts), then those in "
  .. "$DENET_PATH and ~/.config/denet/scripts; the current folder is never searched (name a file there "
  .. "./x.lua). As root, denet loads only files that root or the invoking user owns and no one else can write "
  .. "(docs/security.md)."

local function usage()
  local out = { "usage: denet <command> [args]", "", "commands:" }
  for _, c in ipairs(M.COMMANDS) do
    if #c[1] <= 28 then
      out[#out + 1] = string.format("  %-28s %s", c[1], c[2])
    else
      out[#out + 1] = "  " .. c[1]
      out[#out + 1] = string.rep(" ", 31) .. c[2]
    end
  end
  -- the notes, wrapped at 78 columns
  for _, note in ipairs({ M.SEARCH_NOTE, M.CACHE_NOTE }) do
    out[#out + 1] = ""
    local line = ""
    for word in note:gmatch("%S+") do
      if #line + #word + 1 > 78 then
        out[#out + 1] = line
        line = word
      else
        line = line == "" and word or (line .. " " .. word)
      end
    end
    out[#out + 1] = line
  end
  return table.concat(out, "\n") .. "\n"
end
local USAGE = usage()

-- Arguments a plugin run on its own takes besides its own: the target
-- and the monitor's basic outputs (it rides on the monitor).
local STANDALONE = {
  { name = "pid", flag = "-p", type = "int", metavar = "PID", help = "attach to this process (and its descendants)" },
  { name = "duration", flag = "-d", type = "number", metavar = "SECONDS", help = "stop after this long" },
  { name = "out", flag = "-o", metavar = "FILE", help = "the monitor's JSONL (with plugins.<name>) to FILE" },
  { name = "stats", metavar = "FILE", help = "the summary (with the plugin's on_end under plugins.<name>) to FILE" },
  { name = "interval", flag = "-i", type = "positive", metavar = "MS", help = "sample interval (default 100)" },
}

-- The arguments of a plugin run on its own: its declared ones, then
-- STANDALONE's.
local function standalone_args(declared)
  local list = {}
  for _, a in ipairs(declared or {}) do
    list[#list + 1] = a
  end
  for _, a in ipairs(STANDALONE) do
    list[#list + 1] = a
  end
  return list
end

local function script_name(path)
  return require("denet.util").basename(path, ".lua")
end

-- A plugin run as `denet script NAME [args] [-- CMD | -p PID]`: it rides
-- on a quiet monitor; syscall and off-CPU data are collected when it has
-- the hooks for them.
local function run_plugin(t, path, args)
  local plugins = require("denet.plugins")
  local args_mod = require("denet.args")
  local name = script_name(path)
  local prog = "denet script " .. name
  local spec = { description = t.description, example = t.example, args = standalone_args(t.args) }
  local o = args_mod.parse(prog, spec, args)
  if o.help then
    io.stdout:write(args_mod.usage(prog, spec))
    return 0
  end
  if #o.cmd == 0 and not o.pid then
    errors.raise(string.format("%s needs a target: -- CMD [ARGS...] or -p PID (see %s --help)", prog, prog))
  end
  local mine = {}
  for _, a in ipairs(t.args or {}) do
    mine[a.name] = o[a.name]
  end
  local host = plugins.host({ plugins.from_table(t, path, mine) })
  -- it rides on a quiet monitor: the same run as `denet run` (denet.runner);
  -- a feature whose hook it has runs too (on_offcpu: off-CPU analysis)
  local json = require("denet.json")
  local files = {}
  if o.out then
    files[1] = require("denet").open_output(o.out)
  end
  local flags = {}
  for _, d in ipairs(require("denet.features").list("monitor")) do
    flags[d.monitor.flag] = d.hook and type(t[d.hook]) == "function"
  end
  local run
  run = require("denet.runner").new{
    target = (#o.cmd > 0) and { cmd = o.cmd } or { pids = { o.pid } },
    features = require("denet.features").for_monitor({ interval = (o.interval or 100) / 1000 }, flags),
    duration = o.duration,
    host = host,
    on_record = function(rec)
      for _, f in ipairs(files) do
        f:write(run:encode(rec), "\n")
      end
    end,
  }
  local stats = o.stats and require("denet").open_output(o.stats)
  run:start()
  local signal_code = run:run_to_end()
  local summary, code = run:finish()
  for _, f in ipairs(files) do
    f:close()
  end
  if stats then
    stats:write(json.encode(summary), "\n")
    stats:close()
  end
  if run.proc then
    return code or signal_code or 0
  end
  return 0
end

--- Run the Lua file at path with arguments args (a list); `arg` is set as
--- lua.c sets it. A script that returns a table declaring itself (see
--- denet.plugins) is run from it: its main(opts) with arguments parsed
--- from its declarations (or main(argv) with raw_args), or, for a plugin,
--- on the monitor. A file that returns a function is a bcc-probe script:
--- it is called with bcc's BPF class and utils (bcc.run). Returns the exit
--- code: a number the script (or main) returns, else 128+signal when a
--- Ctrl-C interrupted it, else 0.
function M.run_script(path, args)
  local chunk, err = require("denet.plugins").load_file(path)
  if not chunk then
    -- a syntax error is a script bug: file:line: message, exit 1
    error(err, 0)
  end
  local a = { [0] = path }
  for i, v in ipairs(args) do
    a[i] = v
  end
  _G.arg = a
  -- modules beside the script are found (after denet's own), as Lua
  -- finds them beside a script run from its folder
  local dir = path:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then
    dir = (core.getcwd() or "") .. "/" .. dir
  end
  local lib = core.root .. "/lib/?.lua;" .. core.root .. "/lib/?/init.lua;"
  local builtin = dir:sub(1, #core.root + 1) == core.root .. "/"
  if not builtin and package.path:sub(1, #lib) == lib then
    package.path = lib .. dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path:sub(#lib + 1)
  end
  local rc = chunk(unpack(args))
  -- a script caught Ctrl-C (a pcall'd poll loop) and ended on its own:
  -- it still ends as interrupted (128+signal), unless it chose a code
  local function code(v)
    local sig = core.interrupted()
    return tonumber(v) or (sig and 128 + sig) or 0
  end
  if type(rc) == "function" then
    -- written for bcc-probe: return function(BPF, utils) ... end
    return code(require("bcc.run")(path, rc))
  end
  if type(rc) == "table" then
    if type(rc.main) == "function" then
      if rc.raw_args then
        return code(rc.main(args))
      end
      local args_mod = require("denet.args")
      local prog = "denet script " .. script_name(path)
      local o = args_mod.parse(prog, rc, args)
      if o.help then
        io.stdout:write(args_mod.usage(prog, rc))
        return 0
      end
      return code(rc.main(o))
    elseif require("denet.plugins").has_hooks(rc) then
      return run_plugin(rc, path, args)
    end
  end
  return code(rc)
end

-- `denet list`: scripts on the search path by category
local function list()
  local plugins = require("denet.plugins")
  local by, cats = {}, {}
  for _, s in ipairs(plugins.list()) do
    local c = s.info.category or (s.info.kind == "script" and "scripts" or "other")
    if not by[c] then
      by[c] = {}
      cats[#cats + 1] = c
    end
    table.insert(by[c], s)
  end
  table.sort(cats)
  for _, c in ipairs(cats) do
    io.stdout:write(c, "\n")
    for _, s in ipairs(by[c]) do
      local where = s.path:sub(1, #core.root) == core.root and "" or ("  [" .. s.path .. "]")
      io.stdout:write(string.format("  %-16s %-8s %s%s\n", s.name, s.info.kind, s.info.description or "", where))
    end
  end
  io.stdout:write(string.format("\nsearch path: %s\n", table.concat(plugins.search_path(), ":")))
  return 0
end

-- `denet info NAME`: what a script is, its arguments and an example
local function info(args)
  local plugins = require("denet.plugins")
  local args_mod = require("denet.args")
  local name = args[1]
  if not name then
    errors.raise("info: missing the script name (usage: denet info NAME; denet list shows them)")
  end
  local path, err = plugins.find(name)
  if not path then
    errors.raise(err)
  end
  local d = plugins.describe(path)
  local sname = script_name(path)
  local out = {}
  out[#out + 1] = string.format("%s: %s, category %s", sname, d.kind, d.category or "-")
  out[#out + 1] = "file: " .. path
  if d.description then
    out[#out + 1] = d.description
  end
  out[#out + 1] = ""
  if d.raw_args and d.usage then
    out[#out + 1] = d.usage
  elseif d.kind ~= "script" then
    local spec = { args = d.args, example = d.example or string.format("denet script %s -- CMD", sname) }
    if d.kind == "plugin" then
      spec.args = standalone_args(d.args)
    end
    out[#out + 1] = args_mod.usage("denet script " .. sname, spec)
    if d.kind == "plugin" then
      out[#out + 1] = string.format("as a plugin: denet run --plugin %s%s -- CMD", sname,
        #d.args > 0 and (":" .. d.args[1].name .. "=...") or "")
    end
  else
    out[#out + 1] = "a plain script (declares nothing): denet script " .. sname .. " [args...]"
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
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
    local allow = false
    if args[1] == "--allow-untrusted" then
      allow = true
      table.remove(args, 1)
    end
    local name = table.remove(args, 1)
    if not name then
      errors.raise("script: missing the script name or file (usage: denet script NAME|FILE [args...])")
    end
    local plugins = require("denet.plugins")
    if allow then
      core.trust_allow(true)
    end
    local path, err = plugins.find(name)
    if not path then
      errors.raise(err)
    end
    return M.run_script(path, args)
  end,
  list = list,
  info = info,
  export = function(args)
    return require("denet.export.openmetrics").main(args)
  end,
  repl = function(args)
    return require("denet.repl").main(args)
  end,
  doctor = function(args)
    return require("denet.doctor").main(args)
  end,
  cache = function(args)
    return require("denet.cache").main(args)
  end,
  version = version,
  -- the man page, from the declarations (the build writes denet.1)
  man = function()
    io.stdout:write(require("denet.man").page())
    return 0
  end,
  ["--version"] = version,
  ["-V"] = version,
  help = function()
    io.write(USAGE)
    return 0
  end,
  busted = busted,
  -- the library served over two pipes (the Python binding's way in)
  session = function(args)
    local fin, fout
    for i = 1, #args do
      if args[i] == "--in" then
        fin = tonumber(args[i + 1])
      elseif args[i] == "--out" then
        fout = tonumber(args[i + 1])
      end
    end
    if not fin or not fout then
      errors.raise("session: usage: denet session --in FD --out FD (what python/denet uses)")
    end
    return require("denet.session").serve(fin, fout)
  end,
}

-- the monitor's front doors; its options may also come first
local function monitor(args)
  return M.run_script(core.root .. "/scripts/monitor.lua", args)
end
COMMANDS["-h"] = COMMANDS.help
COMMANDS["--help"] = COMMANDS.help

function M.main(argv)
  local args = {}
  -- --no-cache applies to every command; after "--" it is the command's
  local sep = false
  for i = 1, #argv do
    sep = sep or argv[i] == "--"
    if not sep and argv[i] == "--no-cache" then
      require("denet.cache").disable()
    else
      args[#args + 1] = argv[i]
    end
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
