-- monitor: CPU, memory, I/O and threads of a command or a running process
-- and all its descendants, streamed as JSONL (the original denet's
-- format) with a live status line and a summary.
--
--   denet [options] run [options] -- CMD [ARGS...]
--   denet [options] attach [options] PID
--   denet stats FILE [--json]
--
-- `denet run`, `denet attach` and `denet stats` run this script. The run
-- itself is denet.runner's (shared with the other built-ins, plugins and
-- Python), with the monitor feature; this file is the command line, the
-- output streams and the display.
local ffi = require("ffi")
local denet = require("denet")
local core = require("denet.core")
local errors = require("denet.errors")
local json = require("denet.json")
local plugins = require("denet.plugins")
local args_mod = require("denet.args")
local summary_mod = require("denet.monitor.summary")

-- The options, declared (denet.args): the usage text and the parser's
-- table come from here.
local ARGS = {
  { name = "interval", flag = "-i", metavar = "MS", help = "base sampling interval (default 100)" },
  { name = "max_interval", flag = "-m", metavar = "MS", help = "adaptive upper bound (default 1000): the base "
    .. "interval for the first second, then a linear ramp to this by 10 s" },
  { name = "duration", flag = "-d", metavar = "S",
    help = "stop after S seconds (run: SIGTERM the command, SIGKILL after 2 s)" },
  { name = "out", flag = "-o", metavar = "FILE", help = "write JSONL to FILE" },
  { name = "json", flag = "-j", type = "bool", help = "write JSONL to stdout (the command's stdout goes to stderr)" },
  { name = "quiet", flag = "-q", type = "bool", help = "no live display and no summary table" },
  { name = "no_update", flag = "-n", type = "bool", help = "one line per sample instead of an updating status line" },
  { name = "exclude_children", type = "bool", help = "the root process only (`sample` records instead of `tree`)" },
  { name = "since_process_start", type = "bool",
    help = "I/O counted from each process's start, not from when monitoring began" },
  { name = "write_env", type = "bool", help = "an `env` record first (host, kernel, CPU model and cores)" },
  { name = "gpu", type = "bool", help = "NVIDIA GPUs through NVML: per device and per process of the tree "
    .. "(without NVML or a device: said once, the run goes on)" },
  { name = "hw_counters", type = "bool", help = "say on stderr when there are no hardware counters (cycles, "
    .. "instructions, cache misses: tried in every run, and said in the metadata record)" },
  { name = "energy", type = "bool", help = "say on stderr when there is no RAPL energy counter (tried in every run)" },
  { name = "no_counters", type = "bool", help = "no perf counters (task-clock, faults, switches, migrations)" },
  { name = "stats", metavar = "FILE", help = "write the summary record to FILE (the JSONL holds samples only)" },
  { name = "benchmark_tsv", metavar = "FILE", help = "write the summary as Snakemake's benchmark file to FILE (the "
    .. "columns, units and formats of its `benchmark:` directive; docs/workflows.md)" },
  { name = "format", metavar = "FMT", help = "with stats: the summary as text (default), json, or snakemake "
    .. "(Snakemake's benchmark TSV)" },
  { name = "plugin", metavar = "NAME[:K=V,...]", help = "run a plugin on the samples (repeatable; see denet list)" },
  { name = "allow_untrusted", type = "bool", help = "load files that fail the ownership check (docs/security.md)" },
  { name = "plugin_budget", metavar = "S", help = "a plugin's hook call may run S seconds (default 2; 0: no limit)" },
  { name = "plugin_memory", metavar = "MIB", help = "a plugin is stopped when the Lua heap grows past MIB "
    .. "(default 1024)" },
  { name = "no_bpf", type = "bool", help = "do not use BPF (poll /proc only; short-lived children are not seen)" },
  { name = "no_polling", type = "bool", help = "no samples while it runs: only the summary, from the kernel's "
    .. "totals at the end (and --offcpu/--syscalls data)" },
  { name = "debug", type = "bool", help = "say on stderr what denet does (BPF parts and flags, timings)" },
  { name = "html", metavar = "FILE", help = "with stats: CPU, memory, I/O, threads and processes over time "
    .. "and the summary, as one HTML file (works offline)" },
  { name = "prometheus", metavar = "[ADDR:]PORT", help = "serve Prometheus /metrics while it runs (address "
    .. "127.0.0.1 unless given; PORT 0: any free port, printed on stderr)" },
  { name = "prometheus_linger", metavar = "S", help = "at the end, keep serving the final "
    .. "figures until a scrape has them, S seconds at most (default 0)" },
  { name = "version", flag = "-V", type = "bool", help = "print the version and exit" },
  { name = "enable_ebpf", type = "bool", help = "the original's flag: --offcpu, --syscalls and --network where BPF "
    .. "can be used (without it, said once; the monitor runs on)" },
}
-- the features the monitor can add (--offcpu, --syscalls), from the registry
for i, a in ipairs(require("denet.features").monitor_args()) do
  table.insert(ARGS, 12 + i - 1, a)
end

local USAGE = [[
usage: denet [options] run [options] -- CMD [ARGS...]
       denet [options] attach [options] PID
       denet stats FILE [--json | --format text|json|snakemake] [-o OUT]

options:
]] .. args_mod.option_lines(ARGS) .. "\n"

local function fail(msg)
  errors.raise(msg .. " (see denet run --help)")
end

-- option name -> { key, takes_value }
local OPTIONS = { ["-h"] = { "help" }, ["--help"] = { "help" } }
for _, a in ipairs(ARGS) do
  OPTIONS[args_mod.long_flag(a)] = { a.name, a.type ~= "bool" }
  if a.flag then
    OPTIONS[a.flag] = OPTIONS[args_mod.long_flag(a)]
  end
end

--- Parse the command line: options may come before and after the
--- subcommand; `run` takes the first non-option (or what follows `--`)
--- as the command.
local function parse(args)
  local o = { cmd = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      if o.sub ~= "run" then
        fail("'--' comes after 'run'")
      end
      for j = i + 1, #args do
        o.cmd[#o.cmd + 1] = args[j]
      end
      break
    elseif a:sub(1, 1) == "-" and #a > 1 then
      local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
      name = name or a
      local spec = OPTIONS[name]
      if not spec then
        fail(string.format("unknown option '%s'", a))
      end
      if spec[2] then
        local v = inline
        if not v then
          i = i + 1
          v = args[i]
        end
        if v == nil then
          fail(string.format("option %s needs a value", name))
        end
        if spec[1] == "plugin" then
          o.plugins = o.plugins or {}
          o.plugins[#o.plugins + 1] = v
        else
          o[spec[1]] = v
        end
      else
        o[spec[1]] = true
      end
    elseif not o.sub then
      if a ~= "run" and a ~= "attach" and a ~= "stats" then
        fail(string.format("unknown command '%s'", a))
      end
      o.sub = a
    elseif o.sub == "run" then
      for j = i, #args do
        o.cmd[#o.cmd + 1] = args[j]
      end
      break
    elseif o.sub == "attach" then
      if o.pid then
        fail(string.format("attach takes one PID, got '%s' too", a))
      end
      o.pid = a
    else -- stats
      if o.file then
        fail(string.format("stats takes one FILE, got '%s' too", a))
      end
      o.file = a
    end
    i = i + 1
  end
  return o
end

local function number_opt(o, key, flag, min, unit)
  local v = o[key]
  if v == nil then
    return nil
  end
  local n = tonumber(v)
  if not n or n < min or n ~= n or n == math.huge then
    errors.raise(string.format("%s needs a number of %s%s, got '%s'", flag, unit,
      min > 0 and " above 0" or "", tostring(v)))
  end
  return n
end

---------------------------------------------------------------------------
-- output

-- An output of records: each is one write(2) of a whole line, and a write
-- that fails part way (a full disk) is cut back, so the file holds whole
-- records only.
local function open_out(path)
  local fd, msg = core.open_records(path)
  if not fd then
    errors.raise(msg)
  end
  return { fd = fd, path = path }
end

local Out = {}
Out.__index = Out

pcall(ffi.cdef, "int kill(int pid, int sig); int getpid(void);")

-- stop: a failed write stops the run (the record stream); else it is only said
function Out.new(outputs, stop)
  return setmetatable({ outputs = outputs, stop = stop }, Out)
end

--- Write one record to every output, as one line. An output that cannot
--- be written (a full disk) is said in one line and dropped; for the
--- record stream denet then stops as on SIGTERM: the command is sent
--- SIGTERM and the run ends with the records written so far.
function Out:write(rec)
  if #self.outputs == 0 then
    return
  end
  local line = (self.encode and self.encode(rec) or json.encode(rec)) .. "\n"
  for i = #self.outputs, 1, -1 do
    local o = self.outputs[i]
    local ok, msg = core.write_record(o.fd, line)
    if not ok then
      table.remove(self.outputs, i)
      if self.stop then
        io.stderr:write(string.format(
          "denet: cannot write %s: %s; stopping as on SIGTERM (the records written are whole)\n", o.path, msg))
        ffi.C.kill(ffi.C.getpid(), denet.SIGTERM)
      else
        io.stderr:write(string.format("denet: cannot write %s: %s\n", o.path, msg))
      end
    end
  end
end

function Out:close()
  for _, o in ipairs(self.outputs) do
    if o.fd > 2 then
      core.close_fd(o.fd)
    end
  end
  self.outputs = {}
end

local function human_bytes(n)
  n = n or 0
  local units = { "B", "KiB", "MiB", "GiB", "TiB" }
  local i = 1
  while n >= 1024 and i < #units do
    n = n / 1024
    i = i + 1
  end
  return i == 1 and string.format("%d %s", n, units[i]) or string.format("%.1f %s", n, units[i])
end

-- The live status line: elapsed, CPU, RSS, I/O rates, processes, threads.
local Display = {}
Display.__index = Display

function Display.new(mode, t0)
  return setmetatable({ mode = mode, t0 = t0, last = nil }, Display)
end

function Display:show(rec)
  local a = rec.kind == "tree" and rec.aggregated or rec
  local now = core.monotonic()
  local rr, wr = 0, 0
  if self.last then
    local dt = math.max((a.ts_ms - self.last.ts_ms) / 1000, 1e-3)
    rr = ((a.disk_read_bytes or 0) - (self.last.r or 0)) / dt
    wr = ((a.disk_write_bytes or 0) - (self.last.w or 0)) / dt
  end
  self.last = { ts_ms = a.ts_ms, r = a.disk_read_bytes, w = a.disk_write_bytes }
  local line = string.format("%6.1fs  CPU %6.1f%%  RSS %9s  read %9s/s  write %9s/s  %d proc  %d thr",
    now - self.t0, a.cpu_usage or 0, human_bytes((a.mem_rss_kb or 0) * 1024), human_bytes(rr),
    human_bytes(wr), a.process_count or 1, a.thread_count or 0)
  if self.mode == "update" then
    io.stderr:write("\r\27[K", line)
  else
    io.stderr:write(line, "\n")
  end
  io.stderr:flush()
end

function Display:done()
  if self.mode == "update" then
    io.stderr:write("\r\27[K")
  end
end

local function print_summary(s, out)
  local rows = {
    { "total time", string.format("%.2f s", s.total_time_secs) },
    { "samples", tostring(s.sample_count) },
    { "CPU time", string.format("%.3f s", s.cpu_time_secs) },
    { "average CPU", string.format("%.1f %% (time-weighted %.1f %%)", s.avg_cpu_usage,
      s.avg_cpu_usage_time_weighted or s.avg_cpu_usage) },
    { "peak RSS", human_bytes(s.peak_mem_rss_kb * 1024) },
    { "peak PSS", human_bytes((s.peak_mem_pss_kb or 0) * 1024) },
    { "peak USS", human_bytes((s.peak_mem_uss_kb or 0) * 1024) },
    { "disk read", human_bytes(s.total_disk_read_bytes) },
    { "disk written", human_bytes(s.total_disk_write_bytes) },
    { "read (syscalls)", human_bytes(s.total_syscall_read_bytes) },
    { "written (syscalls)", human_bytes(s.total_syscall_write_bytes) },
    { "max processes", tostring(s.max_processes) },
    { "max threads", tostring(s.max_threads) },
  }
  local pc = s.perf_counters
  if pc then
    rows[#rows + 1] = { "faults (minor/major)", string.format("%d / %d", pc.page_faults_minor or 0,
      pc.page_faults_major or 0) }
    rows[#rows + 1] = { "switches, migrations", string.format("%d, %d", pc.context_switches or 0,
      pc.cpu_migrations or 0) }
    if pc.ipc then
      rows[#rows + 1] = { "IPC", string.format("%.2f", pc.ipc) }
    end
  end
  if s.energy then
    rows[#rows + 1] = { "energy (package)", string.format("%.1f J", s.energy.package_joules or 0) }
  end
  if s.gpu then
    rows[#rows + 1] = { "GPU", string.format("%d device(s), peak %.0f%%, tree's memory %.2f GiB", s.gpu.device_count,
      s.gpu.max_system_gpu_utilization, s.gpu.process_memory_usage_gb) }
  end
  local mc = s.memory_characterization
  if mc then
    rows[#rows + 1] = { "memory verdict", mc.verdict .. (#mc.evidence > 0 and (" (" .. mc.evidence[1] .. ")") or "") }
  end
  if s.exit_code ~= json.null and s.exit_code ~= nil then
    rows[#rows + 1] = { "exit code", tostring(s.exit_code) .. (s.signal and
      string.format(" (killed by %s%s)", s.signal, s.core_dumped and ", core dumped" or "") or "") }
  end
  out:write("\n")
  for _, r in ipairs(rows) do
    out:write(string.format("  %-20s %s\n", r[1], r[2]))
  end
end

---------------------------------------------------------------------------
-- denet stats

local function stats(o)
  if not o.file then
    errors.raise("stats needs a FILE: denet stats FILE [--json] [-o OUT]")
  end
  local fmt = o.format or (o.json and "json") or "text"
  if fmt ~= "text" and fmt ~= "json" and fmt ~= "snakemake" then
    errors.raise(string.format("--format is text, json or snakemake, not '%s'", fmt))
  end
  local html = o.html and denet.open_output(o.html)
  local sum, n, bad, records = summary_mod.from_file(o.file)
  if n == 0 then
    errors.raise(string.format("%s holds no samples (no tree or sample records, tagged or untagged): nothing to "
      .. "summarize", o.file))
  end
  if bad > 0 then
    io.stderr:write(string.format("denet: skipped %d line(s) of %s that are not denet records (a partial last "
      .. "line?)\n", bad, o.file))
  end
  local s = sum:result()
  if html then
    local samples = {}
    for _, rec in ipairs(records) do
      local kind = summary_mod.kind_of(rec)
      if kind == "tree" or kind == "sample" then
        rec.kind = kind -- the original's untagged records too
        samples[#samples + 1] = rec
      end
    end
    html:write(require("denet.export.html").stats(samples, s, "denet run: " .. o.file))
    html:close()
  end
  local text = fmt == "snakemake" and require("denet.export.snakemake").tsv(s) or json.encode(s) .. "\n"
  if o.out then
    local f = denet.open_output(o.out)
    f:write(text)
    f:close()
  end
  if fmt == "json" or (fmt == "snakemake" and not o.out) then
    io.stdout:write(text)
  elseif fmt == "text" and (not o.out or not o.quiet) then
    print_summary(s, io.stdout)
  end
  return 0
end

---------------------------------------------------------------------------
-- run / attach

-- The run's target and numbers, checked: the target ({ cmd } or { pids }),
-- and interval, max_interval, duration, linger in the run's units.
local function checked(o)
  local n = {
    interval = (number_opt(o, "interval", "-i/--interval", 1, "milliseconds") or 100) / 1000,
    max_interval = (number_opt(o, "max_interval", "-m/--max-interval", 1, "milliseconds") or 1000) / 1000,
    duration = number_opt(o, "duration", "-d/--duration", 0, "seconds") or 0,
    linger = number_opt(o, "prometheus_linger", "--prometheus-linger", 0, "seconds"),
  }
  if o.sub == "run" then
    if #o.cmd == 0 then
      errors.raise("run needs a command: denet run -- CMD [ARGS...]")
    end
    return { cmd = o.cmd }, n
  end
  local pid = tonumber(o.pid or "")
  if not o.pid then
    errors.raise("attach needs a PID: denet attach PID")
  elseif not pid or pid ~= math.floor(pid) or pid <= 0 then
    errors.raise(string.format("attach needs a PID (a positive number), got '%s'", o.pid))
  end
  return { pids = { pid } }, n
end

-- The record stream (-o FILE, --json), the --stats file and the live
-- display, opened before anything starts: a bad path runs nothing.
local function outputs(o)
  local list = {}
  if o.out then
    list[#list + 1] = open_out(o.out)
  end
  if o.json then
    list[#list + 1] = { fd = 1, path = "the standard output" }
  end
  local display
  if not o.quiet and not o.json and core.isatty(2) then
    display = Display.new(o.no_update and "lines" or "update", core.monotonic())
  end
  -- (opened now, written at the end)
  local tsv = o.benchmark_tsv and denet.open_output(o.benchmark_tsv)
  return Out.new(list, true), o.stats and open_out(o.stats), display, tsv
end

-- The summary where it was asked for, and on a terminal.
local function end_outputs(o, run, s, stats_file, tsv)
  if stats_file then
    Out.new({ stats_file }):write(s)
    core.close_fd(stats_file.fd)
  end
  if tsv then
    tsv:write(require("denet.export.snakemake").tsv(s))
    tsv:close()
  end
  if not o.quiet and not o.json then
    print_summary(s, io.stderr)
  elseif s.signal and not run.sent_signal then
    -- a crash is said even when the summary is not shown
    io.stderr:write(string.format("denet: the command was killed by %s%s\n", s.signal,
      s.core_dumped and " (core dumped)" or ""))
  end
end

-- `denet run` / `denet attach`: the monitor's run.
local function monitor(o, host)
  local target, n = checked(o)
  local out, stats_file, display, tsv = outputs(o)
  -- plugins are loaded (and their arguments checked) before anything runs
  local run
  run = require("denet.runner").new{
    target = target,
    features = require("denet.features").for_monitor({ interval = n.interval, max_interval = n.max_interval,
      exclude_children = o.exclude_children, since_process_start = o.since_process_start,
      no_polling = o.no_polling, write_env = o.write_env, gpu = o.gpu, hw_counters = o.hw_counters,
      energy = o.energy, counters = not o.no_counters }, o, { prometheus = o.prometheus }),
    duration = n.duration > 0 and n.duration or nil,
    bpf = o.no_bpf and false or nil,
    debug = o.debug,
    prometheus = o.prometheus,
    prometheus_linger = n.linger,
    stdout = o.json and 2 or nil,
    name = "monitor",
    host = host or plugins.load_all(o.plugins, { allow_untrusted = o.allow_untrusted,
      budget = number_opt(o, "plugin_budget", "--plugin-budget", 0, "seconds"),
      memory = number_opt(o, "plugin_memory", "--plugin-memory", 1, "MiB") }),
    on_record = function(rec)
      if display and rec.kind == "metadata" then
        -- rates of the first sample are from the baseline
        display.t0 = run.t0
        display.last = { ts_ms = rec.t0_ms, r = 0, w = 0 }
      end
      out:write(rec)
      if display and (rec.kind == "tree" or rec.kind == "sample") then
        display:show(rec)
      end
    end,
  }
  out.encode = function(rec)
    return run:encode(rec)
  end
  run:start()
  local signal_code = run:run_to_end()
  local s, exit_code = run:finish()
  if display then
    display:done()
  end
  out:close()
  end_outputs(o, run, s, stats_file, tsv)
  if run.proc then
    return exit_code or signal_code
  end
  return 0
end

local function main(args, host)
  local o = parse(args)
  if o.help then
    io.stdout:write(USAGE)
    return 0
  end
  if o.version then
    io.stdout:write(string.format("denet %s\n", core.version))
    return 0
  end
  if not o.sub then
    fail("missing the command: run, attach or stats")
  end
  if o.sub == "stats" then
    return stats(o)
  end
  return monitor(o, host)
end

return {
  description = "CPU, memory, I/O and threads of a process tree, streamed as JSONL, with a summary",
  category = "monitor",
  example = "denet run -o out.jsonl -- make -j8",
  usage = USAGE,
  -- its own command line (run/attach/stats and the original's flags),
  -- declared in ARGS (the man page lists them)
  raw_args = true,
  args = ARGS,
  main = main,
}
