-- offcpu: where and why threads block, with kernel and user stacks,
-- categories (sleep, lock, io, net, ipc, poll, paging, runqueue), a
-- diagnosis, folded stacks and an SVG flame graph.
--
--   denet script offcpu [options] [-- CMD ARGS...]
--
-- The work is in lib/denet/offcpu.lua and bpf-src/offcpu.c; this file is
-- the command line. See docs/offcpu.md.
local core = require("denet.core")
local denet = require("denet")
local errors = require("denet.errors")
local offcpu = require("denet.offcpu")
local plugins = require("denet.plugins")
local json = require("denet.json")

local SPEC = {
  description = "Where and why threads block: kernel and user stacks, categories (sleep, lock, io, net, ipc, "
    .. "poll, paging, runqueue), per-thread totals, call sites, a verdict, folded stacks and an SVG flame graph",
  category = "analysis",
  example = "denet script offcpu --svg offcpu.svg -- ./server",
  args = {
    { name = "pids", flag = "-p", long = "--pid", type = "pids", metavar = "PID[,PID]",
      help = "existing processes (their whole trees); no target and no CMD: every process" },
    { name = "tid", flag = "-t", type = "int", metavar = "TID", help = "one thread only" },
    { name = "duration", flag = "-d", type = "number", metavar = "SECONDS",
      help = "duration (default: until CMD exits, or Ctrl-C)" },
    { name = "min_us", flag = "-m", type = "number", metavar = "MIN_US",
      help = "only blocks at least this long (applied in the kernel)" },
    { name = "max_us", flag = "-M", type = "number", metavar = "MAX_US", help = "only blocks at most this long" },
    { name = "state", metavar = "STATES", help = "only these task states: R (preempted), S, D, T, t (e.g. D)" },
    { name = "user_only", flag = "-U", type = "bool", help = "user stacks only" },
    { name = "kernel_only", flag = "-K", type = "bool", help = "kernel stacks only" },
    { name = "stack_depth", type = "int", metavar = "N", help = "keep the N frames nearest the block of each stack" },
    { name = "stack_storage", long = "--stack-storage-size", type = "positive", metavar = "N",
      help = "stack trace map size (default 16384)" },
    { name = "stack_reuse", metavar = "MODE", default = "on", help = "on: reuse a kernel or user stack when a "
      .. "thread blocks where it blocked before (checked in the kernel); off: walk every stack; verify: reuse "
      .. "and also walk, counting disagreements" },
    { name = "unwind", metavar = "HOW", help = "how user stacks are walked: dwarf (from each file's unwind "
      .. "tables, .eh_frame: whole on binaries without frame pointers) or fp (frame pointers)" },
    { name = "no_python", long = "--no-python-frames", type = "bool", help = "no Python frames in user stacks "
      .. "(by default, CPython 3.11 programs show their functions and lines where the interpreter's frames are)" },
    { name = "unwind_max", long = "--unwind-max-mb", type = "positive", metavar = "MIB",
      help = "most kernel memory the unwind tables take (default 256); past it the files least recently "
        .. "loaded are dropped, and stacks through them are marked truncated" },
    { name = "folded", flag = "-f", metavar = "FILE", help = "folded stacks to FILE (flamegraph.pl, speedscope)" },
    { name = "svg", metavar = "FILE", help = "an SVG flame graph to FILE" },
    { name = "pprof", metavar = "FILE", help = "a pprof profile to FILE (gzipped protobuf: go tool pprof, "
      .. "speedscope, Pyroscope)" },
    { name = "html", metavar = "FILE", help = "an interactive report to FILE: flame graph (click to zoom, "
      .. "search), threads, call sites, verdict; one file, works offline" },
    { name = "user_threads_only", type = "bool", help = "user threads only (no kernel threads)" },
    { name = "kernel_threads_only", type = "bool", help = "kernel threads only" },
    { name = "kernel_threads", type = "bool", help = "let the verdict name a kernel thread (by default it "
      .. "is about user threads; the table shows both)" },
    { name = "now", type = "bool", help = "where each thread is blocked right now and for how long, with its "
      .. "stacks, category and a verdict: a snapshot, nothing traced or stopped (with -p, -t or machine-wide)" },
    { name = "json", type = "bool", help = "the report as JSON on stdout" },
  },
}
for _, a in ipairs(plugins.cli_args("on_start, on_interval, on_offcpu, on_end")) do
  SPEC.args[#SPEC.args + 1] = a
end
for _, a in ipairs(require("denet.export.prometheus").ARGS) do
  SPEC.args[#SPEC.args + 1] = a
end

local function fail(msg)
  errors.raise(msg .. " (see denet script offcpu --help)")
end

-- The report on stdout: JSON (without the per-frame module flags of
-- list's items) or text.
local function print_report(o, report, list, text)
  if o.json then
    for _, s in ipairs(list) do
      s.user, s.user_mods = nil, nil
    end
    io.stdout:write(json.encode(report), "\n")
  else
    io.stdout:write(text(report))
  end
end

local function write_file(path, text)
  local f = denet.open_output(path)
  f:write(text)
  f:close()
end

-- The options a tracer takes, from the command line's.
local function tracer_opts(o, states)
  return { min_us = o.min_us, max_us = o.max_us, states = states, user_only = o.user_only,
    kernel_only = o.kernel_only, stack_depth = o.stack_depth, stack_storage = o.stack_storage,
    stack_reuse = o.stack_reuse, unwind = o.unwind, unwind_max_mb = o.unwind_max,
    python_frames = not o.no_python,
    threads = o.user_threads_only and "user" or o.kernel_threads_only and "kernel" or nil,
    kernel_threads = o.kernel_threads or o.kernel_threads_only }
end

-- What is traced, for the line on a terminal.
local function what_traced(o, roots)
  if o.cmd and #o.cmd > 0 then
    return "of " .. require("denet.util").basename(o.cmd[1]) .. " and its descendants"
  elseif o.tid then
    return "of thread " .. o.tid
  elseif #roots > 0 then
    return "of PID " .. table.concat(roots, ", ") .. " and descendants"
  end
  return "of every process"
end

-- On a terminal: one line saying what is traced and how to stop, then a
-- live status line on stderr (nothing of it when stderr is not one).
local function status_line(o, roots)
  if not core.isatty(2) then
    return nil
  end
  io.stderr:write(string.format("Tracing off-CPU time %s%s... Hit Ctrl-C to end.\n", what_traced(o, roots),
    o.duration and string.format(" for %g s", o.duration) or ""))
  return function(run, final)
    if final then
      io.stderr:write("\r\27[K")
      return
    end
    local seen, lost = run.states.offcpu:counts()
    io.stderr:write(string.format("\r\27[K%6.1f s  %d blocks seen  %d stacks lost", core.monotonic() - run.t0, seen,
      lost))
  end
end

-- Check what the command line asks for; returns the state mask.
local function check(o)
  if o.stack_reuse and not ({ on = true, off = true, verify = true })[o.stack_reuse] then
    fail(string.format("--stack-reuse takes on, off or verify, not '%s'", o.stack_reuse))
  end
  if o.unwind and not ({ dwarf = true, fp = true })[o.unwind] then
    fail(string.format("--unwind takes dwarf or fp, not '%s'", o.unwind))
  end
  if o.user_only and o.kernel_only then
    fail("-U and -K exclude each other")
  end
  if o.user_threads_only and o.kernel_threads_only then
    fail("--user-threads-only and --kernel-threads-only exclude each other")
  end
  if o.state then
    local states, err = offcpu.state_mask(o.state)
    if not states then
      fail(err)
    end
    return states
  end
end

-- --now: one snapshot, nothing traced.
local function now(o, roots, states)
  if o.cmd and #o.cmd > 0 then
    fail("--now looks at processes that exist: give -p PID or -t TID (or nothing: every process), not a command")
  end
  for _, k in ipairs({ "duration", "min_us", "max_us", "folded", "svg", "pprof", "html", "prometheus", "plugin",
    "user_only", "kernel_only" }) do
    if o[k] and not (type(o[k]) == "table" and #o[k] == 0) then
      fail(string.format("--now takes no --%s: it is one snapshot, not a trace", k:gsub("_", "-")))
    end
  end
  local report = offcpu.now{ roots = roots, tid = o.tid, stack_depth = o.stack_depth, states = states,
    threads = o.user_threads_only and "user" or o.kernel_threads_only and "kernel" or nil,
    kernel_threads = o.kernel_threads or o.kernel_threads_only }
  print_report(o, report, report.threads, offcpu.now_text)
  return 0
end

-- The report to the files asked for, then on stdout.
local function write_outputs(o, report)
  if o.folded then
    write_file(o.folded, offcpu.folded(report))
  end
  if o.svg then
    write_file(o.svg, offcpu.svg(report, "Off-CPU Time Flame Graph"))
  end
  local d = require("denet.features").get("offcpu")
  if o.pprof then
    d.pprof(o.pprof, report)
  end
  if o.html then
    write_file(o.html, d.html(report))
  end
  print_report(o, report, report.stacks, offcpu.text)
  io.stdout:flush()
end

local function main(o)
  local roots = o.pids or {}
  local states = check(o)
  if o.now then
    return now(o, roots, states)
  end
  -- outputs first: a bad path runs nothing
  for _, path in ipairs({ o.folded, o.svg, o.pprof, o.html }) do
    if path then
      write_file(path, "")
    end
  end
  local status = status_line(o, roots)
  local run = require("denet.runner").new{
    target = { cmd = o.cmd and #o.cmd > 0 and o.cmd or nil, pids = roots, tid = o.tid },
    features = { offcpu = tracer_opts(o, states) }, reports = { "offcpu" }, duration = o.duration,
    host = plugins.load_all(o.plugin, { allow_untrusted = o.allow_untrusted, budget = o.plugin_budget,
      memory = o.plugin_memory }),
    prometheus = o.prometheus, prometheus_linger = o.prometheus_linger, on_tick = status, tick = 0.5,
    -- the report is out before lingering for the last scrape
    on_end = function(_, _, reports)
      write_outputs(o, reports.offcpu)
    end,
  }
  run:start()
  run:run_to_end()
  local _, code = run:finish()
  return code or 0
end

SPEC.main = main
return SPEC
