-- denet.repl: `denet repl [-p PID | -- CMD]`, an interactive Lua console
-- with denet, denet.bpf and the built-ins loaded. Line editing, history
-- (~/.denet_history), multi-line input, tab completion of globals, fields
-- and tracepoint names, pretty printing, Ctrl-C that cancels the line or
-- the running code without leaving, and helpers to run the built-ins live.
local ffi = require("ffi")
local core = require("denet.core")
local errors = require("denet.errors")
local denet = require("denet")

local M = {}

---------------------------------------------------------------------------
-- printing

local function is_ident(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
      return ta < tb
    end
    if ta == "number" or ta == "string" then
      return a < b
    end
    return tostring(a) < tostring(b)
  end)
  return keys
end

--- A readable rendering of v: tables nested (up to depth 3, 50 items
--- each, cycles marked), strings quoted, 64-bit cdata as numbers.
function M.pretty(v, depth, seen, indent)
  depth, seen, indent = depth or 3, seen or {}, indent or ""
  local t = type(v)
  if t == "string" then
    return string.format("%q", v)
  elseif t == "cdata" then
    if ffi.istype("uint64_t", v) or ffi.istype("int64_t", v) then
      return (tostring(v):gsub("U?LL$", ""))
    end
    -- a BPF table's struct: its fields, as a table
    local fields = require("denet.ctypes").field_names[tonumber(ffi.typeof(v))]
    if fields and depth > 0 then
      local out = {}
      for _, f in ipairs(fields) do
        local ok, x = pcall(function()
          return v[f.name]
        end)
        if ok and not f.name:match("^__pad") then
          if type(x) == "cdata" and tostring(ffi.typeof(x)):find("char[^%w_]*%[") then
            x = ffi.string(x)
          end
          out[#out + 1] = f.name .. " = " .. M.pretty(x, depth - 1, seen, indent .. "  ")
        end
      end
      return "{ " .. table.concat(out, ", ") .. " }"
    end
    return tostring(v)
  elseif t ~= "table" then
    return tostring(v)
  end
  if seen[v] then
    return "<cycle>"
  end
  if depth == 0 then
    return "{...}"
  end
  seen[v] = true
  local keys = sorted_keys(v)
  if #keys == 0 then
    seen[v] = nil
    return "{}"
  end
  local n = #v
  local parts, inner = {}, indent .. "  "
  for i, k in ipairs(keys) do
    if i > 50 then
      parts[#parts + 1] = inner .. string.format("... (%d more)", #keys - 50)
      break
    end
    local val = M.pretty(v[k], depth - 1, seen, inner)
    if type(k) == "number" and k >= 1 and k <= n and k == math.floor(k) then
      parts[#parts + 1] = inner .. val
    elseif is_ident(k) then
      parts[#parts + 1] = inner .. k .. " = " .. val
    else
      parts[#parts + 1] = inner .. "[" .. M.pretty(k, 1, seen, inner) .. "] = " .. val
    end
  end
  seen[v] = nil
  local flat = {}
  for i, p in ipairs(parts) do
    flat[i] = p:gsub("^%s+", "")
  end
  local one = "{ " .. table.concat(flat, ", ") .. " }"
  if #one <= 78 and not one:find("\n") then
    return one
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

---------------------------------------------------------------------------
-- completion

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
  "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }

local events_cache
local function tracepoints()
  if not events_cache then
    events_cache = {}
    local sys = require("denet.sys")
    local dir = sys.tracefs()
    local text = dir and core.read_file(dir .. "/available_events", 16 * 1048576) or ""
    for ev in text:gmatch("[^\n]+") do
      events_cache[#events_cache + 1] = ev
    end
  end
  return events_cache
end

local function fields_of(v, out, seen)
  seen = seen or {}
  if seen[v] then
    return
  end
  seen[v] = true
  if type(v) == "table" then
    for k in pairs(v) do
      if type(k) == "string" then
        out[k] = true
      end
    end
  end
  local mt = (type(v) == "table" or type(v) == "userdata") and getmetatable(v)
  if type(mt) == "table" and type(mt.__index) == "table" then
    fields_of(mt.__index, out, seen)
  end
end

--- Candidates for completing `text` (the word before the cursor) in
--- `line`, whose word starts at byte `start` (0-based), in env.
function M.complete(env, text, line, start)
  local before = line:sub(1, start)
  local _, quotes = before:gsub("[\"']", "")
  local out = {}
  if quotes % 2 == 1 then
    -- inside a string: tracepoint names (sched:sched_switch)
    for _, ev in ipairs(tracepoints()) do
      if ev:sub(1, #text) == text then
        out[#out + 1] = ev
      end
    end
    return out
  end
  local path, sep, last = text:match("^(.*)([%.:])([%w_]*)$")
  local names = {}
  if path then
    -- walk the dotted path from the environment (no calls, no side effects)
    local v = env
    for part in path:gmatch("[^%.:]+") do
      if type(v) ~= "table" and not (type(v) == "userdata" and getmetatable(v)) then
        return out
      end
      local ok, nv = pcall(function()
        return v[part]
      end)
      if not ok then
        return out
      end
      v = nv
    end
    fields_of(v, names)
    for k in pairs(names) do
      if k:sub(1, #last) == last and is_ident(k) then
        out[#out + 1] = path .. sep .. k
      end
    end
  else
    fields_of(env, names)
    fields_of(_G, names)
    for _, k in ipairs(KEYWORDS) do
      names[k] = true
    end
    for k in pairs(names) do
      if k:sub(1, #text) == text then
        out[#out + 1] = k
      end
    end
  end
  table.sort(out)
  return out
end

---------------------------------------------------------------------------
-- live built-ins

-- A feature of the registry run live on the target (or everything): a
-- handle with report() (its report so far), top(n) (its text) and
-- stop() (the last report, and the run closed).
local function live(name, target, opts)
  local d = require("denet.features").get(name)
  local run = require("denet.runner").new{ target = { pids = target and { target } or nil },
    features = { [name] = opts or {} } }
  run:start()
  local h = {}
  function h.report()
    return d.report(run.states[name])
  end
  function h.top(_, n)
    io.stdout:write(d.top(d.report(run.states[name]), n))
  end
  function h.stop()
    local r = d.report(run.states[name])
    run:close()
    return r
  end
  return h
end

local HELP = [[
denet repl: Lua with denet loaded.
  denet, bpf (denet.bpf), BPF, ffi, sysnames    the library
  monitor, offcpu, syscalls, stacks               the built-ins' libraries (docs/lua-api.md)
  target                                          the PID given with -p or started with -- CMD (nil: none)
  go()                                            let the held command (-- CMD) run
  offcpu = live.offcpu()                          start off-CPU tracing of the target (or everything)
    offcpu:top(5)  offcpu:report()  offcpu:stop()
  sc = live.syscalls{ latency = true }            start syscall counting of the target (or everything)
    sc:top(10)  sc:report()  sc:stop()
  denet.sleep(2)                                  let tracing run (Ctrl-C stops it early)
Tab completes globals, fields (denet.sp<Tab>) and tracepoints inside strings ("sched:sched_sw<Tab>").
Ctrl-C cancels the line or the running code; Ctrl-D leaves.
]]

---------------------------------------------------------------------------
-- the loop

-- Is this load error only "the chunk is not finished yet"?
local function incomplete(msg)
  return msg and (msg:match("<eof>$") or msg:match("<eof>'?$") or msg:match("unfinished long")) ~= nil
end

local function parse_args(args)
  local o = { cmd = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do
        o.cmd[#o.cmd + 1] = args[j]
      end
      break
    elseif a == "-p" then
      o.pid = tonumber(args[i + 1] or "")
      if not o.pid or not core.read_stat(o.pid) then
        errors.raise(string.format("no such process: %s (usage: denet repl [-p PID | -- CMD])", tostring(args[i + 1])))
      end
      i = i + 1
    elseif a == "-h" or a == "--help" then
      o.help = true
    else
      errors.raise(string.format("unknown argument '%s' (usage: denet repl [-p PID | -- CMD])", a))
    end
    i = i + 1
  end
  return o
end

--- The environment the console's code runs in.
function M.env(target, proc)
  local env = setmetatable({}, { __index = _G })
  env.denet = denet
  env.bpf = require("denet.bpf")
  env.BPF = env.bpf
  env.ffi = ffi
  env.sysnames = require("denet.sysnames")
  -- the built-ins' libraries
  env.monitor = require("denet.monitor")
  env.offcpu = require("denet.offcpu")
  env.stacks = require("denet.stacks")
  env.syscalls = require("denet.syscalls")
  env.target = target
  env.proc = proc
  -- live.<feature>(opts): every feature that runs alone, on the target
  env.live = {}
  for _, d in ipairs(require("denet.features").list("script")) do
    env.live[d.name] = function(opts)
      return live(d.name, target, opts)
    end
  end
  env.go = function()
    if proc and proc:held() then
      proc:resume()
      return true
    end
    return false
  end
  env.help = function()
    io.stdout:write(HELP)
  end
  return env
end

--- Evaluate one complete chunk of source in env and print its results.
--- Returns false when the chunk is incomplete (more lines needed).
function M.eval(src, env, out)
  out = out or io.stdout
  local chunk, err = load("return " .. src, "=stdin")
  if not chunk then
    chunk, err = load(src, "=stdin")
  end
  if not chunk then
    if incomplete(err) then
      return false
    end
    out:write(err, "\n")
    return true
  end
  setfenv(chunk, env)
  local res = { xpcall(chunk, function(e)
    if errors.is_interrupt(e) then
      return e
    end
    return debug.traceback(tostring(type(e) == "table" and (e.message or e[1]) or e), 2)
  end) }
  if not res[1] then
    if errors.is_interrupt(res[2]) then
      -- the console goes on: the next Ctrl-C interrupts again, it does
      -- not end denet
      core.interrupt_handled()
      out:write("interrupted\n")
    else
      out:write(tostring(res[2]), "\n")
    end
    return true
  end
  local n = table.maxn(res)
  if n > 1 then
    local parts = {}
    for i = 2, n do
      parts[#parts + 1] = M.pretty(res[i])
    end
    out:write(table.concat(parts, "\t"), "\n")
  end
  return true
end

function M.main(args)
  local o = parse_args(args)
  if o.help then
    io.stdout:write("usage: denet repl [-p PID | -- CMD ARGS...]\n\n" .. HELP)
    return 0
  end
  local proc, target = nil, o.pid
  if #o.cmd > 0 then
    denet.set_subreaper(true)
    proc = denet.spawn(o.cmd)
    target = proc.pid
  end
  -- interpreted code checks the interrupt hook; compiled loops would not
  if jit then
    jit.off()
  end
  local env = M.env(target, proc)
  core.set_completer(function(text, line, start)
    return M.complete(env, text, line, start)
  end)
  local home = os.getenv("HOME")
  local history = home and home ~= "" and (home .. "/.denet_history") or nil
  if history then
    core.history_read(history)
  end
  io.stdout:write(string.format("denet %s repl%s; help() for the helpers, Ctrl-D to leave\n", core.version,
    target and string.format(" (target %d%s)", target, proc and ", held: go() runs it" or "") or ""))
  local buf = nil
  while true do
    core.defer_signals(true)
    local line = core.readline(buf and ">> " or "denet> ")
    core.defer_signals(false)
    if line == nil then
      io.stdout:write("\n")
      break
    elseif line == false then
      buf = nil -- Ctrl-C: the input is dropped
    else
      buf = buf and (buf .. "\n" .. line) or line
      if buf:match("%S") then
        local done = M.eval(buf, env)
        if done then
          core.history_add((buf:gsub("\n", " ")))
          buf = nil
        end
      else
        buf = nil
      end
      io.stdout:flush()
    end
  end
  if history then
    core.history_write(history)
  end
  if proc then
    if proc:held() then
      proc:resume()
    end
    proc:kill(denet.SIGTERM)
  end
  return 0
end

return M
