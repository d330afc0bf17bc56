-- denet.plugins: finding scripts, deciding whether to trust them, reading
-- what they declare, and running plugins' hooks with each one isolated.
--
-- A script is a Lua file. One that returns a table declares itself:
--   description, category, args (see denet.args), example,
--   and either main(opts) (a command, like the built-ins) or hooks (a
--   plugin): on_init(args), on_start(target), on_sample(sample),
--   on_process(event), on_syscalls(stats), on_offcpu(report),
--   on_interval(elapsed) (every `interval` seconds of wall time),
--   on_end(summary).
-- A file that returns nothing is a plain script: it has run when loaded.
local bit = require("bit")
local core = require("denet.core")
local errors = require("denet.errors")
local args_mod = require("denet.args")

local M = {}

M.HOOKS = { "on_init", "on_start", "on_sample", "on_process", "on_syscalls", "on_offcpu", "on_interval",
  "on_end" }
M.MAX_ERRORS = 3 -- a plugin failing this many times is disabled
-- Budgets: a hook call may run this many seconds (on_init and on_start,
-- where plugins compile BPF, get SETUP_BUDGET_S), and the Lua heap, which
-- plugins share with denet, may not grow past MEMORY_MIB while a plugin
-- runs. A plugin over either is stopped there, named and disabled.
M.BUDGET_S = 2
M.SETUP_BUDGET_S = 120
M.MEMORY_MIB = 1024
local CHECK_EVERY = 10000 -- VM instructions between two budget checks

---------------------------------------------------------------------------
-- where scripts are

local function is_file(p)
  local st = core.stat(p)
  return st and not st.dir
end

local note = require("denet.util").note_once -- one line each, once per run

--- The folders of the built-in scripts: they come first, and their names
--- always mean them.
function M.builtin_dirs()
  return { core.root .. "/scripts", core.root .. "/scripts/examples" }
end

--- The folders searched for scripts named without a path, in order: the
--- built-ins, $DENET_PATH (colon-separated), ~/.config/denet/scripts. The
--- current directory is never searched (name a file there ./x.lua).
--- Relative $DENET_PATH entries, and (as root) folders that fail the
--- trust check, are left out with one line each.
function M.search_path()
  local dirs = M.builtin_dirs()
  local function add(d, asked)
    if d:sub(1, 1) ~= "/" then
      note(string.format("ignoring DENET_PATH entry '%s': relative entries are never searched (use an absolute "
        .. "path)", d))
      return
    end
    local ok, why, errno = core.trust_dir(d)
    if ok or (errno ~= 1 and errno ~= 40) then -- EPERM, ELOOP: refused; missing folders are harmless
      dirs[#dirs + 1] = d
    elseif asked then
      note(string.format("ignoring DENET_PATH entry '%s': %s", d, why))
    else
      note(string.format("ignoring %s: %s", d, why))
    end
  end
  for d in (os.getenv("DENET_PATH") or ""):gmatch("[^:]+") do
    add(d, true)
  end
  local home = os.getenv("HOME")
  if home and home:sub(1, 1) == "/" then
    local d = home .. "/.config/denet/scripts"
    if core.stat(d) then
      add(d, false)
    end
  end
  return dirs
end

--- The file of script `name`: a path (it has a "/" or ends in .lua), or a
--- name looked up as NAME.lua on the search path, built-ins first; nil and
--- a message when there is none. A file of a built-in's name elsewhere on
--- the path gets one line and is not used.
function M.find(name)
  if name:find("/") or name:match("%.lua$") then
    if is_file(name) then
      return name
    end
    return nil, string.format("cannot open script %s: no such file", name)
  end
  local found
  for i, dir in ipairs(M.search_path()) do
    local p = dir .. "/" .. name .. ".lua"
    if is_file(p) then
      if not found then
        found = p
        if i > #M.builtin_dirs() then
          break
        end
      elseif i > #M.builtin_dirs() then
        note(string.format("%s has the name of a built-in; '%s' means the built-in (run that file by its path)",
          p, name))
      end
    end
  end
  if found then
    return found
  end
  return nil, string.format("no script named '%s' on the search path (%s); denet list shows them, and a file "
    .. "in the current folder is named by its path (./%s.lua)", name, table.concat(M.search_path(), ":"), name)
end

--- May denet run the code in path? As root (or with capabilities), the
--- file and every folder from / down to it must belong to root or the
--- invoking user (SUDO_UID under sudo) and be writable by no one else
--- (sticky folders like /tmp excepted); see host/dn_trust.c. Returns true,
--- or false and the one-line refusal with the fix.
function M.trusted(path)
  local text, err, _, refused = core.trust_read(path)
  if text then
    return true
  end
  return false, err, refused
end

--- Read the Lua file at path through the trust check and compile it (as
--- loadfile, chunk name @path). allow: --allow-untrusted. A refusal or an
--- unreadable file raises a user error; a syntax error returns nil, msg.
function M.load_file(path, allow)
  if allow then
    core.trust_allow(true)
  end
  local text, err = core.trust_read(path)
  if not text then
    errors.raise(err)
  end
  -- errors raised by denet's API name the place in the user's own file
  -- (built-in scripts are denet's own: their place is no help)
  if path:sub(1, #core.root + 1) ~= core.root .. "/" then
    errors.user_sources["@" .. path] = true
  end
  return loadstring((text:gsub("^#[^\n]*", "")), "@" .. path)
end

---------------------------------------------------------------------------
-- what a script declares

-- An environment where a script's top level can run without doing
-- anything: every global and module is an inert stand-in.
local function inert()
  local mt = {}
  local p = setmetatable({}, mt)
  mt.__index = function()
    return p
  end
  mt.__call = function()
    return p
  end
  mt.__newindex = function() end
  return p
end

--- What the script at path declares, without running it: its returned
--- table's description, category, args and example, and whether it is a
--- plugin (has hooks) or a command (main). Plain scripts give
--- { kind = "script" }.
function M.describe(path)
  local text, err, _, refused = core.trust_read(path)
  if not text then
    if refused then
      return { kind = "refused", description = err, refused = true }
    end
    return { kind = "script", broken = true }
  end
  local chunk = loadstring((text:gsub("^#[^\n]*", "")), "@" .. path)
  if not chunk then
    return { kind = "script", broken = true }
  end
  -- denet's own declaration helpers are real (they do nothing on load)
  local real = { ["denet.plugins"] = true, ["denet.args"] = true }
  local env = setmetatable({
    require = function(name)
      if real[name] then
        return require(name)
      end
      return inert()
    end,
    arg = {},
  }, {
    __index = function(_, k)
      local safe = { string = string, table = table, math = math, pairs = pairs, ipairs = ipairs,
        type = type, tostring = tostring, tonumber = tonumber, setmetatable = setmetatable,
        getmetatable = getmetatable, select = select, unpack = unpack, pcall = pcall, error = error,
        next = next, rawget = rawget, rawset = rawset, bit = bit }
      return safe[k] or inert()
    end,
  })
  setfenv(chunk, env)
  -- a plain script's top level may loop: give it a budget (counted in
  -- interpreted code only, so no JIT for it)
  if jit then
    jit.off(chunk, true)
  end
  local budget_hit = false
  debug.sethook(function()
    budget_hit = true
    error("budget", 0)
  end, "", 1e6)
  local ok, t = pcall(chunk)
  debug.sethook()
  if not ok or budget_hit or type(t) ~= "table" or rawget(t, "description") == nil then
    return { kind = "script" }
  end
  local kind = type(rawget(t, "main")) == "function" and "command" or "plugin"
  return { kind = kind, description = t.description, category = t.category or "other", args = t.args or {},
    example = t.example, interval = t.interval, usage = rawget(t, "usage"), raw_args = rawget(t, "raw_args") }
end

--- Every script on the search path: { name, path, info } (the first of
--- each name wins), sorted by name.
function M.list()
  local seen, out = {}, {}
  for _, dir in ipairs(M.search_path()) do
    for _, f in ipairs(core.list_dir(dir) or {}) do
      local name = f:match("^(.+)%.lua$")
      local path = dir .. "/" .. f
      if name and not seen[name] and is_file(path) then
        seen[name] = true
        out[#out + 1] = { name = name, path = path, info = M.describe(path) }
      end
    end
  end
  table.sort(out, function(a, b)
    return a.name < b.name
  end)
  return out
end

---------------------------------------------------------------------------
-- loading and running plugins

local Plugin = {}
Plugin.__index = Plugin

local function basename(path)
  return require("denet.util").basename(path, ".lua")
end

--- Load the plugin named by spec ("NAME", "path.lua", optionally followed
--- by ":key=value,..." arguments): find it, check trust, run its file,
--- parse its arguments. opts.allow_untrusted.
function M.load(spec, opts)
  opts = opts or {}
  local name, argtext = spec:match("^([^:]+):(.*)$")
  name = name or spec
  local path, err = M.find(name)
  if not path then
    errors.raise(err)
  end
  local chunk, lerr = M.load_file(path, opts.allow_untrusted)
  if not chunk then
    errors.raise(string.format("plugin %s: %s", basename(path), lerr))
  end
  -- budgets are checked by a count hook, which compiled traces never call:
  -- a plugin's code (every function of its file) runs interpreted
  if jit then
    jit.off(chunk, true)
  end
  local ok, t = pcall(chunk)
  if not ok then
    errors.raise(string.format("plugin %s: %s", basename(path), tostring(t)))
  end
  if type(t) ~= "table" or not M.has_hooks(t) then
    errors.raise(string.format("plugin %s: %s is not a plugin: it returns no table of hooks (%s; see "
      .. "docs/plugins.md)", basename(path), path, table.concat(M.HOOKS, ", ")))
  end
  return M.from_table(t, path, opts.args or args_mod.parse("plugin " .. (t.name or basename(path)),
    { args = t.args, no_cmd = true }, args_mod.from_pairs(argtext)))
end

--- A plugin from its loaded table t (file path; parsed args).
function M.from_table(t, path, args)
  if jit then
    for _, hook in ipairs(M.HOOKS) do
      if type(t[hook]) == "function" then
        jit.off(t[hook], true)
      end
    end
  end
  return setmetatable({ name = t.name or basename(path), path = path, t = t, errors = 0, args = args or {} },
    Plugin)
end

--- Does table t (what a script returned) have any hook?
function M.has_hooks(t)
  for _, h in ipairs(M.HOOKS) do
    if type(t[h]) == "function" then
      return true
    end
  end
  return false
end

-- "file:line: message" of an error value, whatever it is
local function message(e)
  if type(e) == "table" then
    return tostring(e.message or e[1] or "error")
  end
  return tostring(e)
end

-- the error a budget check raises
local Over = {}
Over.__index = Over
Over.__tostring = function(e)
  return e.message
end

local Host = {}
Host.__index = Host
M.Host = Host

-- Call plugin p's hook f (named hook) with the budgets checked; returns
-- what pcall does.
function Host:run(p, hook, f, ...)
  local limit = self.budget
  if limit > 0 and (hook == "on_init" or hook == "on_start") then
    limit = math.max(limit, M.SETUP_BUDGET_S)
  end
  local heap_kib = self.memory * 1024
  local t0 = core.monotonic()
  -- a hook that runs the loop (denet.sleep) may call another plugin's:
  -- the outer budget hook comes back after it
  local outer, outer_mask, outer_count = debug.gethook()
  local stop -- the error, once over a budget
  local run_fn = debug.getinfo(1, "f").func
  local function check()
    if stop then
      -- not in this function, between the plugin's return and the reset
      if debug.getinfo(2, "f").func ~= run_fn then
        error(stop, 0)
      end
      return
    end
    local over
    local dt = core.monotonic() - t0
    if limit > 0 and dt > limit then
      over = string.format("%s ran for %.1f s (budget %g s, --plugin-budget)", hook, dt, limit)
    elseif heap_kib > 0 and collectgarbage("count") > heap_kib then
      collectgarbage()
      if collectgarbage("count") > heap_kib then
        over = string.format("%s grew the Lua heap past %d MiB (--plugin-memory)", hook, self.memory)
      end
    end
    if over then
      local info = debug.getinfo(2, "Sl")
      local where = info and info.currentline and info.currentline > 0 and
        string.format("%s:%d: ", info.short_src, info.currentline) or ""
      stop = setmetatable({ message = where .. over }, Over)
      -- from now on at every instruction: a pcall of the plugin's own
      -- that catches it is left at the next one
      debug.sethook(check, "", 1)
      error(stop, 0)
    end
  end
  -- (named for a wait that nests the loop too deep; set before the
  -- budget hook, taken back after it: once over a budget, no function
  -- but this one may run)
  local denet = require("denet")
  denet._hook(string.format("%s (plugin %s)", hook, p.name))
  debug.sethook(check, "", CHECK_EVERY)
  local res = { pcall(f, ...) }
  if stop then
    res = { false, stop }
  end
  if type(outer) == "function" then
    debug.sethook(outer, outer_mask, outer_count)
  else
    debug.sethook()
  end
  denet._hook(nil)
  return unpack(res, 1, table.maxn(res))
end

-- A hook of p raised e: say so, and disable p after MAX_ERRORS. An
-- interrupt (Ctrl-C) is not the plugin's fault: it ends the run.
function Host:failed(p, e)
  if errors.is_interrupt(e) then
    error(e, 0)
  end
  if getmetatable(e) == Over then
    -- over a budget: stopped at once, and what it holds let go
    p.disabled = true
    p.t = {}
    collectgarbage()
    self.out:write(string.format("plugin %s: stopped: %s; disabled, the run goes on without it\n", p.name,
      e.message))
    return
  end
  p.errors = p.errors + 1
  self.out:write(string.format("plugin %s: %s\n", p.name, message(e)))
  if p.errors >= M.MAX_ERRORS and not p.disabled then
    p.disabled = true
    self.out:write(string.format("plugin %s: disabled after %d errors; the run goes on without it\n", p.name,
      p.errors))
  end
end

--- Call hook on every plugin that has it and is not disabled; returns
--- { [plugin name] = what it returned }. Errors are reported as
--- "plugin NAME: file:line: message"; the run goes on.
function Host:call(hook, ...)
  local results = {}
  for _, p in ipairs(self.plugins) do
    local f = not p.disabled and p.t[hook]
    if type(f) == "function" then
      local ok, r = self:run(p, hook, f, ...)
      if ok then
        results[p.name] = r
      else
        self:failed(p, r)
      end
    end
  end
  return results
end

--- Any plugin with this hook?
function Host:has(hook)
  for _, p in ipairs(self.plugins) do
    if type(p.t[hook]) == "function" then
      return true
    end
  end
  return false
end

--- on_init for each plugin with its parsed args.
function Host:init()
  for _, p in ipairs(self.plugins) do
    local f = p.t.on_init
    if type(f) == "function" and not p.disabled then
      local ok, r = self:run(p, "on_init", f, p.args)
      if not ok then
        self:failed(p, r)
      end
    end
  end
end

--- Start the wall-clock on_interval timers (every plugin's own
--- `interval`, default 1 s); stop() is called when one returns false.
function Host:start_intervals(stop)
  local denet = require("denet")
  local t0 = core.monotonic()
  for _, p in ipairs(self.plugins) do
    if type(p.t.on_interval) == "function" then
      local every = tonumber(p.t.interval) or 1
      self.timers[#self.timers + 1] = denet.every(every, function()
        if p.disabled then
          return
        end
        local ok, r = self:run(p, "on_interval", p.t.on_interval, core.monotonic() - t0)
        if not ok then
          self:failed(p, r)
        elseif r == false and stop then
          stop(p.name)
        end
      end)
    end
  end
end

function Host:stop_intervals()
  for _, t in ipairs(self.timers) do
    t:close()
  end
  self.timers = {}
end

--- The set of plugins of one run. out: where notes go (stderr).
--- limits: { budget = seconds per hook call (0: none), memory = MiB }.
function M.host(list, out, limits)
  limits = limits or {}
  return setmetatable({ plugins = list or {}, out = out or io.stderr, timers = {},
    budget = limits.budget or M.BUDGET_S, memory = limits.memory or M.MEMORY_MIB }, Host)
end

--- The arguments a built-in command takes for plugins (--plugin,
--- --allow-untrusted), for its declarations; hooks: the ones it calls.
function M.cli_args(hooks)
  return {
    { name = "plugin", type = "string", repeatable = true, metavar = "NAME[:K=V,...]",
      help = "run a plugin (" .. hooks .. "); repeatable" },
    { name = "allow_untrusted", type = "bool", help = "load files that fail the ownership check (docs/security.md)" },
    { name = "plugin_budget", type = "number", metavar = "S",
      help = "a plugin's hook call may run S seconds (default " .. M.BUDGET_S .. "; 0: no limit)" },
    { name = "plugin_memory", type = "positive", metavar = "MIB",
      help = "a plugin is stopped when the Lua heap grows past MIB (default " .. M.MEMORY_MIB .. ")" },
  }
end

--- What ends a built-in's run when a plugin's on_interval returns false:
--- the command is sent SIGTERM (as at the end of -d), or the loop stops.
function M.stopper(proc)
  local denet = require("denet")
  return function()
    if proc then
      proc:kill(denet.SIGTERM)
    else
      denet.stop()
    end
  end
end

--- Load every --plugin spec of a built-in's command line. opts:
--- allow_untrusted, budget (seconds), memory (MiB).
function M.load_all(specs, opts)
  opts = opts or {}
  local list = {}
  for _, s in ipairs(specs or {}) do
    list[#list + 1] = M.load(s, opts)
  end
  return M.host(list, nil, { budget = opts.budget, memory = opts.memory })
end

M.Plugin = Plugin
return M
