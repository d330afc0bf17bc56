-- denet.monitor.run: one monitoring run, from start to summary: the loop
-- `denet run`/`attach`, plugins run on their own, and the Python binding
-- all call (none of them builds a command line for another).
--
--   local run = require("denet.monitor.run")
--   local s = run.session{ cmd = { "make", "-j8" }, on_record = function(rec) ... end }
--   s:start()                  -- env and metadata records, the command resumed
--   s:run_to_end()             -- samples on the adaptive schedule until it ends
--   local summary, code = s:finish()
--
-- or, one step at a time (Python): s:sample_now(), s:step(seconds).
local core = require("denet.core")
local denet = require("denet")
local errors = require("denet.errors")
local json = require("denet.json")
local monitor = require("denet.monitor")
local env = require("denet.monitor.env")
local summary_mod = require("denet.monitor.summary")

local M = {}

local Session = {}
Session.__index = Session

local SESSION_OPTS = { "cmd", "pid", "interval", "max_interval", "duration", "exclude_children",
  "since_process_start", "bpf", "offcpu", "syscalls", "no_polling", "host", "stdout", "stderr", "write_env",
  "on_record", "on_notice", "debug", "prometheus", "prometheus_linger" }

--- A run. opts: cmd (a list: run it) or pid (attach); interval and
--- max_interval (seconds; 0.1 and 1); duration (seconds; nil: until it
--- ends); exclude_children; since_process_start; bpf (nil: when it can,
--- false: /proc only); offcpu; syscalls; no_polling (no samples while it
--- runs: the summary comes from the kernel's totals at the end); host (a
--- denet.plugins host); stdout, stderr (fds for the command); write_env;
--- on_record(rec) (env, metadata, tree or sample records, as made);
--- on_notice(text) (one-line notes; default stderr); debug (notes on what
--- denet does, to stderr); prometheus ("[ADDR:]PORT": serve /metrics
--- while it runs) and prometheus_linger (seconds to wait at the end for a
--- scrape of the final figures).
function M.session(opts)
  errors.check_opts("run.session", opts, SESSION_OPTS)
  if not opts.cmd and not opts.pid then
    error("run.session: give cmd= or pid=", 2)
  end
  if opts.cmd and #opts.cmd == 0 then
    errors.raise("run needs a command: denet run -- CMD [ARGS...]")
  end
  local self = setmetatable({
    opts = opts,
    host = opts.host or require("denet.plugins").host({}),
    summary = summary_mod.new(),
    notice = opts.on_notice or function(text)
      io.stderr:write("denet: ", text, "\n")
    end,
  }, Session)
  return self
end

function Session:debug(fmt, ...)
  if self.opts.debug then
    io.stderr:write("denet: debug: ", string.format(fmt, ...), "\n")
  end
end

function Session:_emit(rec)
  self.summary:add(rec)
  if self.opts.on_record then
    self.opts.on_record(rec)
  end
end

--- Build the tree, spawn the command held (run) or check the process
--- (attach), take the baseline, write the env and metadata records, and
--- let the command go. Plugins see on_start before it runs.
function Session:start()
  local o = self.opts
  local tree = require("denet.tree")
  local bpf = o.bpf
  if bpf == nil and not tree.bpf_usable() then
    local sys = require("denet.sys")
    local ok, who = sys.privileges()
    local why = not ok and ("no BPF privileges (" .. who .. ")") or (not sys.kernel_headers() and
      "no kernel headers") or "tracefs is not mounted"
    self.notice(string.format("%s: monitoring by /proc polling only; children that live shorter than one interval "
      .. "are not seen, though their CPU time still counts through their parent", why))
    bpf = false
  end
  self.bpf = bpf ~= false
  self.host:init()
  local proc
  if o.cmd then
    denet.set_subreaper(true)
    proc = denet.spawn(o.cmd, { stdout = o.stdout, stderr = o.stderr })
  end
  self.proc = proc
  if o.prometheus then
    local P = require("denet.export.prometheus")
    self.exporter = P.serve(o.prometheus, { target = P.target_name(o.cmd, o.pid), pid = proc and proc.pid or o.pid })
    self.notice("serving metrics on " .. self.exporter.url)
  end
  local t0 = core.monotonic()
  local m = monitor.new{
    proc = proc,
    pid = o.pid,
    interval = o.interval or 0.1,
    max_interval = o.max_interval or 1,
    exclude_children = o.exclude_children,
    since_process_start = o.since_process_start,
    bpf = bpf,
    offcpu = o.offcpu,
    syscalls = o.syscalls,
    -- Prometheus gets a latency histogram of the syscalls
    syscall_latency = o.syscalls and o.prometheus ~= nil,
    on_event = function(ev)
      self.host:call("on_process", ev)
    end,
    on_sample = function(rec)
      self:_on_sample(rec)
    end,
  }
  self.m = m
  self:debug("tree %s, built in %.2f s%s", m.tree.mode, core.monotonic() - t0, m.tree.program and
    (": " .. table.concat(m.tree.program.flags, " ")) or "")
  local root = o.pid or proc.pid
  self.root = root
  if o.write_env then
    self:_emit(env.record(root))
  end
  local argv = o.cmd
  local procfs = require("denet.procfs")
  if not o.cmd then
    argv = procfs.cmdline(root) or {}
  end
  -- from the plugins' on_start on, a SIGINT/SIGTERM ends the run the
  -- graceful way (run_to_end gets it from the loop: on_end runs), never
  -- as an interrupt in the middle of starting
  core.defer_signals(true)
  local ok, err = pcall(self._start_run, self, m, o, root, argv)
  core.defer_signals(false)
  if not ok then
    error(err, 0)
  end
  return self
end

function Session:_start_run(m, o, root, argv)
  local procfs = require("denet.procfs")
  m:start{
    before_resume = function()
      -- plugins see the target before it runs (uprobes miss nothing)
      self.host:call("on_start", { pid = root, cmd = argv, executable = o.cmd and denet.which(o.cmd[1]) or
        procfs.exe(root), mode = o.cmd and "run" or "attach" })
    end,
  }
  -- the compiler's job is done: keep the resident set small from here on
  core.release_compiler_memory()
  -- resumed: the command has exec'd, so /proc/PID/exe is what runs
  self.metadata = { kind = "metadata", pid = root, cmd = json.array(argv), executable = procfs.exe(root) or
    (o.cmd and denet.which(o.cmd[1])) or "", t0_ms = m.t0_ms, capabilities = env.capabilities(root) }
  self:_emit(self.metadata)
  self.host:start_intervals(function()
    m:request_stop()
  end)
  self.stop_at = o.duration and o.duration > 0 and (m.t0_mono + o.duration) or nil
  self.t0_mono = m.t0_mono
end

-- a sample was taken: plugins' hooks, their fields, then out
function Session:_on_sample(rec)
  self:_export(rec, false)
  local res = self.host:call("on_sample", rec)
  local ebpf = rec.aggregated and rec.aggregated.ebpf
  if ebpf and ebpf.syscalls then
    self.host:call("on_syscalls", ebpf.syscalls)
  end
  if ebpf and ebpf.offcpu then
    self.host:call("on_offcpu", ebpf.offcpu)
  end
  -- what plugins return goes in the record, under plugins.<name>
  for name, v in pairs(res) do
    if type(v) == "table" then
      rec.plugins = rec.plugins or {}
      rec.plugins[name] = v
    end
  end
  self:_emit(rec)
end

-- The record's figures (and the full syscall report) to /metrics: at most
-- every 0.5 s while it runs (sampling starts at 10 a second), and always
-- for the final figures.
function Session:_export(rec, final)
  local ex = self.exporter
  if not ex or (not final and ex.t_published and core.monotonic() - ex.t_published < 0.5) then
    return
  end
  local metrics = require("denet.metrics")
  local fams = metrics.new()
  local snap = self.m and self.m.sc_snap
  if snap then
    metrics.add_syscalls(fams, require("denet.syscalls").report(snap), ex.ident)
  end
  metrics.from_record(rec, ex.ident, fams)
  ex:publish(fams)
end

--- Is the monitored process still there?
function Session:running()
  if self.ended then
    return false
  end
  if self.proc then
    return not self.exited
  end
  return core.read_stat(self.root) ~= nil and not self.m.root_gone
end

--- One sample now, whatever the schedule: the record, or nil once the
--- process is gone (a sample of what is no longer there measures nothing).
function Session:sample_now()
  if not self:running() then
    return nil
  end
  if self.proc then
    -- exited (a zombie until finish() reaps it)?
    local _, _, _, state = core.read_stat(self.root)
    if not state or state == string.byte("Z") then
      self.exited = true
      return nil
    end
  end
  local rec = self.m:sample()
  self.m:_check_root_gone()
  return rec
end

--- Run the schedule for up to `seconds` (nil: until the end). Returns
--- "running" when the time is up, else why it stopped: "exit",
--- "duration" (the run's duration, or a plugin ended it), or "signal"
--- (with the signal and its si_code).
function Session:step(seconds)
  if self.ended or self.exited then
    return "exit"
  end
  local stop = self.stop_at
  local until_t = seconds and (core.monotonic() + seconds) or nil
  if until_t and (not stop or until_t < stop) then
    stop = until_t
  end
  local why, sig, code = self.m:run{ stop_at = stop, no_samples = self.opts.no_polling }
  if why == "duration" then
    if self.m.stopped_by_request then
      self.m.stopped_by_request = false
      return "duration"
    end
    if self.stop_at and core.monotonic() >= self.stop_at - 1e-4 then
      return "duration"
    end
    return "running"
  end
  if why == "exit" then
    self.exited = true
  end
  return why, sig, code
end

--- Run until the end with the command line's rules: at the duration the
--- command gets SIGTERM, then SIGKILL 2 s later; a first SIGINT/SIGTERM is
--- passed on to it (a terminal's Ctrl-C already reached it), a second one
--- kills it; attached, any of them ends the run. Returns the exit code a
--- signal stands for (128+signal), or nil.
function Session:run_to_end()
  -- signals come from the loop, between steps too
  return denet.with_signals_deferred(self._run_to_end, self)
end

function Session:_run_to_end()
  local proc, signals, killed, code = self.proc, 0, false, nil
  while true do
    local why, sig, si_code = self:step(nil)
    if why == "exit" then
      break
    elseif why == "duration" then
      if not proc then
        break
      end
      self.sent_signal = true
      if not killed then
        proc:kill(denet.SIGTERM)
        killed = true
        self.stop_at = core.monotonic() + 2
      else
        proc:kill(denet.SIGKILL)
        self.stop_at = nil
      end
    elseif why == "signal" then
      signals = signals + 1
      if not proc then
        break
      end
      self.sent_signal = true
      if signals >= 2 then
        proc:kill(denet.SIGKILL)
      elseif not (sig == denet.SIGINT and si_code == 0x80) then
        proc:kill(sig)
      end
      code = 128 + sig
    end
  end
  self.signal_code = code
  return code
end

--- End the run: wait for and reap the command (run), account for what
--- happened since the last sample, call the plugins' on_end, release the
--- programs. Returns the summary record and the command's exit code.
function Session:finish()
  if self.ended then
    return self.result, self.exit_code
  end
  local code
  local end_ms = self.m.exit_ms or math.floor(core.realtime() * 1000)
  if self.proc then
    code = self.m:collect_root()
  end
  local totals = self.m:finish()
  totals.end_ms = end_ms
  if self.exporter then
    self:_export(totals, true)
  end
  self.host:stop_intervals()
  -- the run's last off-CPU and syscall figures for plugins too
  if totals.ebpf and totals.ebpf.syscalls then
    self.host:call("on_syscalls", totals.ebpf.syscalls)
  end
  if totals.ebpf and totals.ebpf.offcpu then
    self.host:call("on_offcpu", totals.ebpf.offcpu)
  end
  local s = self.summary:result(self.proc and code or nil, totals)
  if self.proc and self.proc.signal then
    -- killed by a signal: which one, and whether it dumped core
    s.signal = denet.signal_name(self.proc.signal)
    s.core_dumped = self.proc.core_dumped
  end
  local res = self.host:call("on_end", s)
  for name, v in pairs(res) do
    if type(v) == "table" then
      s.plugins = s.plugins or {}
      s.plugins[name] = v
    end
  end
  self.ended = true
  self.result, self.exit_code = s, code
  if self.exporter then
    -- the final figures, until a scrape has them (or the linger is over);
    -- a run ended by Ctrl-C or SIGTERM does not wait
    if not self.signal_code then
      self.exporter:linger(self.opts.prometheus_linger)
    end
    self.exporter:close()
  end
  return s, code
end

--- Stop now (Python was interrupted, or gave up): the command, if denet
--- started it, is sent SIGTERM, then SIGKILL after 2 s, and the run ends.
function Session:abort()
  if self.proc and not self.ended then
    local _, _, _, state = core.read_stat(self.root)
    if state and state ~= string.byte("Z") then
      self.proc:kill(denet.SIGTERM)
      if not self.proc:wait{ timeout = 2 } then
        self.proc:kill(denet.SIGKILL)
      end
    end
    self.exited = true
  end
  return self:finish()
end

return M
