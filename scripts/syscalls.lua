-- syscalls: counts, errors and latency per syscall, process and thread.
--
--   denet script syscalls [options] [-- CMD ARGS...]
--
-- The work is in lib/denet/syscalls.lua and bpf-src/syscalls.c; this file
-- is the command line. See docs/syscalls.md.
local denet = require("denet")
local core = require("denet.core")
local errors = require("denet.errors")
local syscalls = require("denet.syscalls")
local sysnames = require("denet.sysnames")
local cjson = require("cjson")

cjson.encode_sparse_array(true)

local USAGE = [[
usage: denet script syscalls [options] [-- CMD ARGS...]

  -p PID[,PID]            existing processes (their whole trees)
                          (no target and no CMD: every process on the machine)
  -d SECONDS              duration (default: until CMD exits, or Ctrl-C)
  -i SECONDS              print a table every interval (of that interval's calls)
  -T N                    top N syscalls (default 10)
  -L                      latency: total, average, max and a log2 histogram (ns)
  -x                      failed calls only
  -e ERRNO                only calls failing with this error (ENOENT or 2)
  --syscall NAME[,NAME]   only these syscalls
  -P                      per process
  --per-thread            per thread
  --json                  the report as JSON on stdout (one line per interval with -i)
  -l                      list the syscall names of this machine and exit
  -h, --help              this text
]]

local function fail(msg)
  errors.raise(msg .. " (see denet script syscalls --help)")
end

local VALUE = { ["-p"] = "pids", ["-d"] = "duration", ["-i"] = "interval", ["-T"] = "top", ["-e"] = "errno",
  ["--syscall"] = "syscall" }
local FLAG = { ["-L"] = "latency", ["-x"] = "failed", ["-P"] = "per_process", ["--per-thread"] = "per_thread",
  ["--json"] = "json", ["-l"] = "list", ["-h"] = "help", ["--help"] = "help" }

local function parse(args)
  local o, i = { cmd = {} }, 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do
        o.cmd[#o.cmd + 1] = args[j]
      end
      break
    elseif VALUE[a] then
      if args[i + 1] == nil then
        fail("option " .. a .. " needs a value")
      end
      o[VALUE[a]] = args[i + 1]
      i = i + 1
    elseif FLAG[a] then
      o[FLAG[a]] = true
    else
      fail(string.format("unknown argument '%s'", a))
    end
    i = i + 1
  end
  return o
end

local function num(o, key, flag, positive)
  if o[key] == nil then
    return nil
  end
  local n = tonumber(o[key])
  if not n or n < 0 or (positive and n <= 0) then
    errors.raise(string.format("%s needs a %s number, got '%s'", flag, positive and "positive" or "non-negative",
      o[key]))
  end
  return n
end

local function main(args)
  local o = parse(args)
  if o.help then
    io.stdout:write(USAGE)
    return 0
  end
  if o.list then
    io.stdout:write(table.concat(sysnames.all(), "\n"), "\n")
    return 0
  end
  local roots = {}
  for p in (o.pids or ""):gmatch("[^,]+") do
    local pid = tonumber(p)
    if not pid or not core.read_stat(pid) then
      errors.raise(string.format("no such process: %s", p))
    end
    roots[#roots + 1] = pid
  end
  local errno
  if o.errno then
    errno = sysnames.errno_number(o.errno)
    if not errno then
      fail(string.format("unknown errno '%s'", o.errno))
    end
  end
  local names
  if o.syscall then
    local err
    names, err = syscalls.parse_names(o.syscall)
    if not names then
      errors.raise(err)
    end
  end
  if o.per_process and o.per_thread then
    fail("-P and --per-thread exclude each other")
  end
  local top = num(o, "top", "-T", true) or 10
  local duration = num(o, "duration", "-d")
  local interval = num(o, "interval", "-i", true)
  local proc
  if #o.cmd > 0 then
    denet.set_subreaper(true)
    proc = denet.spawn(o.cmd)
  end
  local t = syscalls.start{
    roots = roots, proc = proc, latency = o.latency, per_thread = o.per_thread, per_process = o.per_process,
    failed = o.failed,
    errno = errno, syscalls = names,
  }
  local ropts = function()
    return { top = top, per_process = o.per_process, per_thread = o.per_thread }
  end
  local function emit(report)
    if o.json then
      io.stdout:write(cjson.encode(report), "\n")
    else
      io.stdout:write(syscalls.text(report, o.latency))
    end
    io.stdout:flush()
  end
  local prev
  local ticker
  if interval then
    ticker = denet.every(interval, function()
      local report, snap = t:report(prev, ropts())
      prev = snap
      emit(report)
    end)
  end
  local code
  if proc then
    proc:resume()
    code = proc:wait_for(duration)
  else
    local why = denet.run{ duration = duration }
    if why == "signal" then
      code = 0
    end
  end
  if ticker then
    ticker:close()
  end
  local report = t:report(prev, ropts())
  t:close()
  emit(report)
  return proc and code or 0
end

return main(arg)
