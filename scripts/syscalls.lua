-- syscalls: counts, errors and latency per syscall, process and thread.
--
--   denet script syscalls [options] [-- CMD ARGS...]
--
-- The work is in lib/denet/syscalls.lua and bpf-src/syscalls.c; this file
-- is the command line. See docs/syscalls.md.
local errors = require("denet.errors")
local syscalls = require("denet.syscalls")
local plugins = require("denet.plugins")
local sysnames = require("denet.sysnames")
local json = require("denet.json")

local SPEC = {
  description = "Syscall counts, errors by errno and latency histograms per syscall, process or thread",
  category = "analysis",
  example = "denet script syscalls -L -P -- ./server",
  args = {
    { name = "pids", flag = "-p", long = "--pid", type = "pids", metavar = "PID[,PID]",
      help = "existing processes (their whole trees); no target and no CMD: the whole machine" },
    { name = "duration", flag = "-d", type = "number", metavar = "SECONDS",
      help = "duration (default: until CMD exits, or Ctrl-C)" },
    { name = "interval", flag = "-i", type = "positive", metavar = "SECONDS",
      help = "print a table every interval (of that interval's calls)" },
    { name = "top", flag = "-T", type = "positive", metavar = "N", default = 10, help = "top N syscalls" },
    { name = "latency", flag = "-L", type = "bool", help = "latency: total, average, max and a log2 histogram (ns)" },
    { name = "failed", flag = "-x", type = "bool", help = "failed calls only" },
    { name = "errno", flag = "-e", metavar = "ERRNO", help = "only calls failing with this error (ENOENT or 2)" },
    { name = "syscall", metavar = "NAME[,NAME]", help = "only these syscalls" },
    { name = "per_process", flag = "-P", type = "bool", help = "per process" },
    { name = "per_thread", type = "bool", help = "per thread" },
    { name = "json", type = "bool", help = "the report as JSON on stdout (one line per interval with -i)" },
    { name = "list", flag = "-l", type = "bool", help = "list the syscall names of this machine and exit" },
  },
}
for _, a in ipairs(plugins.cli_args("on_start, on_interval, on_syscalls, on_end")) do
  SPEC.args[#SPEC.args + 1] = a
end
for _, a in ipairs(require("denet.export.prometheus").ARGS) do
  SPEC.args[#SPEC.args + 1] = a
end

local function fail(msg)
  errors.raise(msg .. " (see denet script syscalls --help)")
end

local function main(o)
  if o.list then
    io.stdout:write(table.concat(sysnames.all(), "\n"), "\n")
    return 0
  end
  local roots = o.pids or {}
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
  local function emit(report)
    if o.json then
      io.stdout:write(json.encode(report), "\n")
    else
      io.stdout:write(syscalls.text(report, o.latency))
    end
    io.stdout:flush()
  end
  local run = require("denet.runner").new{
    target = { cmd = o.cmd and #o.cmd > 0 and o.cmd or nil, pids = roots }, duration = o.duration,
    features = { syscalls = { latency = o.latency or o.prometheus ~= nil, per_thread = o.per_thread,
      per_process = o.per_process, failed = o.failed, errno = errno, syscalls = names, top = o.top,
      interval = o.interval } },
    reports = { "syscalls" },
    host = plugins.load_all(o.plugin, { allow_untrusted = o.allow_untrusted, budget = o.plugin_budget,
      memory = o.plugin_memory }),
    -- --prometheus: the counts, errors and latency histogram of every syscall
    prometheus = o.prometheus, prometheus_linger = o.prometheus_linger,
    on_interval = function(_, report)
      emit(report)
    end,
    on_end = function(_, _, reports)
      emit(reports.syscalls)
    end,
  }
  run:start()
  run:run_to_end()
  local _, code = run:finish()
  return code or 0
end

SPEC.main = main
return SPEC
