-- offcpu: where and why threads block, with kernel and user stacks,
-- categories (sleep, lock, io, net, ipc, poll, paging, runqueue), a
-- diagnosis, folded stacks and an SVG flame graph.
--
--   denet script offcpu [options] [-- CMD ARGS...]
--
-- The work is in lib/denet/offcpu.lua and bpf-src/offcpu.c; this file is
-- the command line. See docs/offcpu.md.
local denet = require("denet")
local core = require("denet.core")
local errors = require("denet.errors")
local offcpu = require("denet.offcpu")
local cjson = require("cjson")

cjson.encode_sparse_array(true)

local USAGE = [[
usage: denet script offcpu [options] [-- CMD ARGS...]

  -p PID[,PID]            existing processes (their whole trees)
  -t TID                  one thread only
                          (no target and no CMD: every process on the machine)
  -d SECONDS              duration (default: until CMD exits, or Ctrl-C)
  -m MIN_US / -M MAX_US   only blocks at least / at most this long (applied in the kernel)
  --state STATES          only these task states: R (preempted), S, D, T, t (e.g. D)
  -U / -K                 user / kernel stacks only
  --stack-depth N         keep the N frames nearest the block of each stack
  --stack-storage-size N  stack trace map size (default 16384)
  --stack-reuse MODE      on (default): reuse a kernel stack when a thread blocks where it
                          blocked before (checked in the kernel); off: walk every stack;
                          verify: reuse and also walk, counting disagreements
  -f FILE                 folded stacks to FILE (flamegraph.pl, speedscope)
  --svg FILE              an SVG flame graph to FILE
  --json                  the report as JSON on stdout
  -h, --help              this text
]]

local function fail(msg)
  errors.raise(msg .. " (see denet script offcpu --help)")
end

local VALUE = { ["-p"] = "pids", ["-t"] = "tid", ["-d"] = "duration", ["-m"] = "min_us", ["-M"] = "max_us",
  ["--state"] = "state", ["--stack-depth"] = "stack_depth", ["--stack-storage-size"] = "stack_storage",
  ["--stack-reuse"] = "stack_reuse",
  ["-f"] = "folded", ["--svg"] = "svg" }
local FLAG = { ["-U"] = "user_only", ["-K"] = "kernel_only", ["--json"] = "json", ["-h"] = "help",
  ["--help"] = "help" }

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

local function num(o, key, flag)
  if o[key] == nil then
    return nil
  end
  local n = tonumber(o[key])
  if not n or n < 0 then
    errors.raise(string.format("%s needs a non-negative number, got '%s'", flag, o[key]))
  end
  return n
end

local function write_file(path, text)
  local f = denet.open_output(path)
  f:write(text)
  f:close()
end

local function main(args)
  local o = parse(args)
  if o.help then
    io.stdout:write(USAGE)
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
  if o.stack_reuse and not ({ on = true, off = true, verify = true })[o.stack_reuse] then
    fail(string.format("--stack-reuse takes on, off or verify, not '%s'", o.stack_reuse))
  end
  if o.user_only and o.kernel_only then
    fail("-U and -K exclude each other")
  end
  local states
  if o.state then
    local err
    states, err = offcpu.state_mask(o.state)
    if not states then
      fail(err)
    end
  end
  -- outputs first: a bad path runs nothing
  for _, path in ipairs({ o.folded, o.svg }) do
    if path then
      write_file(path, "")
    end
  end
  local proc
  if #o.cmd > 0 then
    denet.set_subreaper(true)
    proc = denet.spawn(o.cmd)
  end
  local t = offcpu.start{
    roots = roots, proc = proc, tid = num(o, "tid", "-t"), min_us = num(o, "min_us", "-m"),
    max_us = num(o, "max_us", "-M"), states = states, user_only = o.user_only, kernel_only = o.kernel_only,
    stack_depth = num(o, "stack_depth", "--stack-depth"), stack_storage = num(o, "stack_storage", "--stack-storage-size"),
    stack_reuse = o.stack_reuse,
  }
  local duration = num(o, "duration", "-d")
  t:capture()
  -- mappings are captured at intervals and after exec, so stacks of
  -- processes that exit before the report still resolve
  local cap = denet.every(0.25, function()
    t:capture()
  end)
  local code
  if proc then
    t:mark_start()
    proc:resume()
    denet.sleep(0.02)
    t:capture()
    code = proc:wait_for(duration)
  else
    local why = denet.run{ duration = duration }
    if why == "signal" then
      code = 0
    end
  end
  cap:close()
  local report = t:report()
  t:close()
  if o.folded then
    write_file(o.folded, offcpu.folded(report))
  end
  if o.svg then
    write_file(o.svg, offcpu.svg(report, "Off-CPU Time Flame Graph"))
  end
  if o.json then
    for _, s in ipairs(report.stacks) do
      s.user, s.user_mods = nil, nil
    end
    io.stdout:write(cjson.encode(report), "\n")
  else
    io.stdout:write(offcpu.text(report))
  end
  return proc and code or 0
end

return main(arg)
