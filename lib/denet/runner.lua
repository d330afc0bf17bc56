-- denet.runner: the one place that owns a run of denet, whatever runs in
-- it: the target (a command, processes, one thread, or the whole machine),
-- the features measuring it (lib/denet/features/: the monitor, off-CPU
-- analysis, syscall tracking, ...), the plugins, the duration, the ticks,
-- the signals, the end and the output. `denet run`/`attach`, `denet
-- script offcpu|syscalls`, plugins run on their own, the Python binding
-- and the REPL all run through it; none builds a command line for another.
--
--   local runner = require("denet.runner")
--   local run = runner.new{ target = { cmd = { "make", "-j8" } },
--     features = { monitor = { interval = 0.1 }, offcpu = {} },
--     on_record = function(rec) ... end }
--   run:start()            -- program built, targets tracked, plugins' on_start, the command let go
--   run:run_to_end()       -- until it exits (the duration, a signal, a plugin)
--   local summary, code, reports = run:finish()
--
-- or, a step at a time (Python): run:step(seconds), run:sample_now().
--
-- The same payloads reach plugins from every run: on_start(target),
-- on_process(event), on_sample(record) (the monitor's), the features'
-- hooks with their reports (on_syscalls each interval and at the end,
-- on_offcpu at the end), on_interval(elapsed) and on_end(summary).
local core = require("denet.core")
local denet = require("denet")
local errors = require("denet.errors")
local features = require("denet.features")
local json = require("denet.json")

local M = {}

local Run = {}
Run.__index = Run
M.Run = Run

local NEW_OPTS = { "target", "features", "host", "duration", "bpf", "prometheus", "prometheus_linger",
  "on_record", "on_notice", "on_interval", "on_tick", "tick", "on_end", "stdout", "stderr", "reports", "debug",
  "name" }

--- A run, not started. opts: target = { cmd = argv } (run it, held until
--- the features are ready), { pids = { pid, ... } } (those processes and
--- their descendants), { tid = N } (one thread), or {} (every process but
--- denet); features = { name = options } (lib/denet/features/); host (a
--- denet.plugins host); duration (seconds; a command then gets SIGTERM,
--- and SIGKILL 2 s later); bpf (false: none, where every feature can do
--- without: the monitor polls /proc); prometheus ("[ADDR:]PORT": serve
--- /metrics while it runs) and prometheus_linger (seconds to wait at the
--- end for a scrape of the final figures); on_record(rec) (the records
--- features make: env, metadata, samples); on_notice(text) (one-line
--- notes; default stderr); on_interval(name, report) (a feature's report
--- of an interval); on_tick(run, final) every `tick` seconds (default 1)
--- and once at the end; on_end(summary, code, reports) when the run has
--- ended, before finish() waits for the last scrape (outputs go there);
--- stdout, stderr (for the command); reports (names of the features
--- whose final reports finish() returns); name (for diagnostics); debug.
function M.new(opts)
  errors.check_opts("runner.new", opts, NEW_OPTS)
  local target = opts.target or {}
  if target.cmd and #target.cmd == 0 then
    errors.raise("run needs a command: denet run -- CMD [ARGS...]")
  end
  local self = setmetatable({ opts = opts, target = target, host = opts.host or require("denet.plugins").host({}),
    wanted = opts.features or {}, states = {}, sources = {}, reports = {} }, Run)
  self.notice = opts.on_notice or function(text)
    io.stderr:write("denet: ", text, "\n")
  end
  for name in pairs(self.wanted) do
    features.get(name) -- an unknown feature is a bug of the caller
  end
  return self
end

function Run:debug(fmt, ...)
  if self.opts.debug then
    io.stderr:write("denet: debug: ", string.format(fmt, ...), "\n")
  end
end

--- The features of the run in the registry's order: { name, d, opts }.
function Run:active()
  local out = {}
  for _, d in ipairs(features.list()) do
    if self.wanted[d.name] then
      out[#out + 1] = { name = d.name, d = d, opts = self.wanted[d.name] }
    end
  end
  return out
end

---------------------------------------------------------------------------
-- what features use of the run

--- Call fn every `seconds` while the run lasts (closed at its end).
function Run:every(seconds, fn)
  local s = denet.every(seconds, fn)
  self.sources[#self.sources + 1] = s
  return s
end

--- Call fn once after `seconds` (unless the run ended before).
function Run:after(seconds, fn)
  local s = denet.after(seconds, fn)
  self.sources[#self.sources + 1] = s
  return s
end

--- A timer fn at absolute times (denet.timer), closed at the run's end.
function Run:timer(fn)
  local t = denet.timer(fn)
  self.sources[#self.sources + 1] = t
  return t
end

local SAMPLE = { tree = true, sample = true }

--- A feature made a record: samples go to the plugins (on_sample; what
--- they return is written under plugins.<name>) and to /metrics; every
--- record then goes to on_record.
function Run:emit(rec)
  if SAMPLE[rec.kind] then
    for name, v in pairs(self.host:call("on_sample", rec)) do
      if type(v) == "table" then
        rec.plugins = rec.plugins or {}
        rec.plugins[name] = v
      end
    end
    -- each sample is an interval for the features with interval reports
    for _, f in ipairs(self:active()) do
      if f.d.interval_report and f.d.hook then
        self:interval(f.name)
      end
    end
    self:publish(false)
  end
  if self.opts.on_record then
    self.opts.on_record(rec)
  end
end

--- Feature `name`'s report of the interval just ended goes to its plugin
--- hook and to on_interval.
function Run:interval(name)
  local f = features.get(name)
  local report = f.interval_report(self.states[name])
  self.host:call(f.hook, report)
  if self.opts.on_interval then
    self.opts.on_interval(name, report)
  end
end

--- The figures of every feature that has them but the monitor (which
--- carries them in its samples as aggregated.ebpf): { name = figures },
--- or nil when there are none.
function Run:figures()
  local out
  for _, f in ipairs(self:active()) do
    if f.d.figures then
      out = out or {}
      out[f.name] = f.d.figures(self.states[f.name])
    end
  end
  return out
end

--- End the run as when its duration is over (a plugin asked).
function Run:request_stop()
  self.stop_requested = true
end

--- End the run now (why: "exit" when the target has gone).
function Run:request_end(why)
  self.end_requested = why or "exit"
end

---------------------------------------------------------------------------
-- starting

-- The command, held before exec; or the processes, checked.
function Run:_prepare_target()
  local t = self.target
  if t.cmd then
    denet.set_subreaper(true)
    self.proc = denet.spawn(t.cmd, { stdout = self.opts.stdout, stderr = self.opts.stderr })
    self.root, self.mode = self.proc.pid, "run"
  elseif t.tid then
    if not core.read_file(string.format("/proc/%d/stat", t.tid)) then
      errors.raise(string.format("no thread %d", t.tid))
    end
    self.mode = "thread"
  elseif t.pids and #t.pids > 0 then
    for _, pid in ipairs(t.pids) do
      local _, _, _, state = core.read_stat(pid)
      if not state or state == string.byte("Z") then
        errors.raise(string.format("no such process: %d", pid), 2, 3) -- (ESRCH)
      end
    end
    self.root, self.mode = t.pids[1], "attach"
  else
    self.mode = "system"
  end
end

-- Does the run use BPF? (nil: when it can work here; a feature that needs
-- it then says why it cannot)
function Run:_use_bpf()
  local want = self.opts.bpf
  local optional = true
  for _, f in ipairs(self:active()) do
    optional = optional and f.d.optional_bpf == true
  end
  if want == false then
    if not optional then
      errors.raise("this needs BPF, which is not available here (see denet doctor)")
    end
    return false
  end
  local tree = require("denet.tree")
  if optional and not tree.bpf_usable() then
    local sys = require("denet.sys")
    local ok, who = sys.privileges()
    local why = not ok and ("no BPF privileges (" .. who .. ")") or (not sys.kernel_headers() and
      "no kernel headers") or "tracefs is not mounted"
    self.notice(string.format("%s: monitoring by /proc polling only; children that live shorter than one interval "
      .. "are not seen, though their CPU time still counts through their parent", why))
    return false
  end
  return true
end

-- The tree of the target, with one program of every feature's BPF part.
function Run:_build()
  local parts = {}
  self.pre = {}
  for _, f in ipairs(self:active()) do
    if f.d.prepare then
      f.d.prepare(f.opts, self.target)
    end
    if f.d.bpf then
      parts[f.name] = f.opts
    end
  end
  local t0 = core.monotonic()
  local exclude = self.wanted.monitor and self.wanted.monitor.exclude_children
  self.tree = require("denet.tree").for_run{ bpf = self:_use_bpf(), target = self.target, proc = self.proc,
    features = parts, follow = not exclude, name = self.opts.name,
    on_event = function(ev)
      self:_on_process(ev)
    end,
    -- the window begins as the probes go live: no block a program
    -- records starts before it
    before_attach = function(bpf)
      for _, f in ipairs(self:active()) do
        if f.d.before_attach then
          self.pre[f.name] = f.d.before_attach(f.opts, self.target, bpf)
        end
      end
      self.t0_ns = core.monotonic_ns()
    end }
  self.t0_ns = self.t0_ns or core.monotonic_ns()
  self.bpf, self.program = self.tree.bpf, self.tree.program
  self:debug("tree %s, built in %.2f s%s", self.tree.mode, core.monotonic() - t0, self.program and
    (": " .. table.concat(self.program.flags, " ")) or "")
end

function Run:_on_process(ev)
  for _, f in ipairs(self:active()) do
    local s = self.states[f.name]
    if s and f.d.on_process then
      f.d.on_process(s, ev)
    end
  end
  self.host:call("on_process", ev)
end

--- What plugins' on_start gets: { pid, pids, tid, cmd, executable, mode
--- ("run", "attach", "thread" or "system") }.
function Run:target_info()
  local t, procfs = self.target, require("denet.procfs")
  local cmd = t.cmd or (self.root and procfs.cmdline(self.root)) or {}
  local pids = (t.pids and #t.pids > 0) and t.pids or (self.root and { self.root }) or {}
  return { pid = self.root, pids = json.array(pids), tid = t.tid,
    cmd = cmd, executable = t.cmd and denet.which(t.cmd[1]) or (self.root and procfs.exe(self.root)) or nil,
    mode = self.mode }
end

-- Serve /metrics, when asked.
function Run:_export()
  local spec = self.opts.prometheus
  if not spec then
    return
  end
  local P = require("denet.export.prometheus")
  self.exporter = P.serve(spec, { target = P.target_name(self.target.cmd, self.root or (self.target.pids or {})[1]),
    pid = self.root or "" })
  self.notice("serving metrics on " .. self.exporter.url)
end

--- Start: the command held, the program built and attached, the targets
--- tracked, each feature started, the plugins' on_start (before the
--- command runs: uprobes miss nothing), then the command let go. A
--- SIGINT/SIGTERM from the plugins' on_start on ends the run the graceful
--- way (run_to_end gets it from the loop), never as an interrupt in the
--- middle of starting.
function Run:start()
  self.host:init()
  self:_prepare_target()
  self:_export()
  self:_build()
  core.defer_signals(true)
  local ok, err = pcall(self._start_features, self)
  core.defer_signals(false)
  if not ok then
    error(err, 0)
  end
  return self
end

function Run:_start_features()
  for _, f in ipairs(self:active()) do
    self.states[f.name] = f.d.start(self, f.opts, self.pre[f.name])
  end
  -- the compiler's job is done: keep the resident set small from here on
  -- (once the features have read what the window starts from, before the
  -- command runs: paging it out takes a while, and the stack learners
  -- must keep up with the first blocks)
  core.release_compiler_memory()
  self.host:call("on_start", self:target_info())
  if self.proc then
    -- a command's window begins as it is let go
    self.t0_ns = core.monotonic_ns()
    self.proc:resume()
  end
  self.t0, self.t0_real = core.monotonic(), core.realtime()
  for _, f in ipairs(self:active()) do
    if f.d.resumed then
      f.d.resumed(self.states[f.name])
    end
  end
  self.host:start_intervals(function()
    self:request_stop()
  end)
  self.stop_at = self.opts.duration and self.opts.duration > 0 and (self.t0 + self.opts.duration) or nil
  if self.opts.on_tick or self.exporter then
    self:every(self.opts.tick or (self.exporter and 0.5 or 1), function()
      self:publish(false)
      if self.opts.on_tick then
        self.opts.on_tick(self, false)
      end
    end)
  end
end

---------------------------------------------------------------------------
-- running

--- The figures of every feature to /metrics: at most every 0.5 s while
--- it runs, and always the final ones.
function Run:publish(final)
  local ex = self.exporter
  if not ex or (not final and ex.t_published and core.monotonic() - ex.t_published < 0.5) then
    return
  end
  local fams = require("denet.metrics").new()
  if self.root then
    ex.ident.pid = self.root
  end
  for _, f in ipairs(self:active()) do
    local st = self.states[f.name]
    if st and f.d.metrics then
      f.d.metrics(fams, st, ex.ident)
    end
  end
  ex:publish(fams)
end

--- Is the target still there? (a command that has not exited, an
--- attached process)
function Run:running()
  if self.ended or self.exited then
    return false
  end
  local attached = self.mode == "attach" and self.root
  if self.proc or attached then
    -- (attached: a zombie its parent has not reaped yet has exited too)
    local _, _, _, state = core.read_stat(self.root)
    local alive = state ~= nil and state ~= string.byte("Z")
    return alive and not (attached and self.end_requested)
  end
  return self.end_requested == nil
end

--- One sample now, whatever the schedule (the monitor's): the record, or
--- nil once the process is gone (a sample of what is no longer there
--- measures nothing).
function Run:sample_now()
  local m = self.states.monitor
  if not m or not self:running() then
    if self.proc and not self:running() then
      self.exited = true
    elseif self.mode == "attach" and not self.end_requested then
      self:request_end("exit")
    end
    return nil
  end
  return m:sample_now()
end

-- Watch the command's exit (its pidfd is readable once it has exited; it
-- stays a zombie for finish() to read).
function Run:_watch_exit()
  if not self.proc or self.exit_watch or self.exited then
    return
  end
  local fd = self.proc.c:pidfd()
  if fd < 0 then
    self.exited = true
    return
  end
  self.exit_watch = denet.watch_fd(fd, function()
    self.exited = true
    self.exit_ms = self.exit_ms or math.floor(core.realtime() * 1000)
    self.exit_watch:close()
  end)
end

--- Run the loop for up to `seconds` (nil: until something ends it).
--- Returns "running" when the time is up, else why it stopped: "exit"
--- (the command exited, or an attached target has gone), "duration" (the
--- run's duration, or a plugin ended it), or "signal" (with the signal
--- and its si_code).
function Run:step(seconds)
  if self.ended or self.exited then
    return "exit"
  end
  self:_watch_exit()
  local until_t = seconds and (core.monotonic() + seconds)
  local why, sig, code = denet.with_signals_deferred(function()
    while true do
      if self.exited or self.end_requested then
        return "exit"
      end
      if self.stop_requested then
        self.stop_requested = false
        return "duration"
      end
      local now = core.monotonic()
      if self.stop_at and now >= self.stop_at - 1e-4 then
        return "duration"
      end
      if until_t and now >= until_t then
        return "running"
      end
      local wait = math.min(self.stop_at and self.stop_at - now or math.huge, until_t and until_t - now or math.huge)
      local _, s, c = denet._poll(wait < math.huge and wait or -1, "the run")
      if s ~= 0 then
        return "signal", s, c
      end
    end
  end)
  if why == "exit" and self.proc then
    self.exited = true
  end
  return why, sig, code
end

local SI_KERNEL = 0x80 -- a terminal's Ctrl-C (it reached the command already)

--- Run until the end with the command line's rules: at the duration the
--- command gets SIGTERM, then SIGKILL 2 s later; a first SIGINT/SIGTERM is
--- passed on to it (a terminal's Ctrl-C already reached it), a second one
--- kills it; attached or machine-wide, any of them ends the run. Returns
--- the exit code a signal stands for (128+signal), or nil.
function Run:run_to_end()
  local proc, signals, killed, code = self.proc, 0, false, nil
  while true do
    local why, sig, si_code = self:step(nil)
    if why == "exit" or (not proc and why ~= "running") then
      code = why == "signal" and 128 + sig or code
      break
    elseif why == "duration" then
      self.sent_signal = true
      proc:kill(killed and denet.SIGKILL or denet.SIGTERM)
      self.stop_at = not killed and core.monotonic() + 2 or nil
      killed = true
    elseif why == "signal" then
      signals = signals + 1
      self.sent_signal = true
      if signals >= 2 then
        proc:kill(denet.SIGKILL)
      elseif not (sig == denet.SIGINT and si_code == SI_KERNEL) then
        proc:kill(sig)
      end
      code = 128 + sig
    end
  end
  self.signal_code = code
  return code
end

---------------------------------------------------------------------------
-- the end

-- Stop every source of the run, and the plugins' intervals.
function Run:_stop_sources()
  for _, s in ipairs(self.sources) do
    s:close()
  end
  self.sources = {}
  if self.exit_watch then
    self.exit_watch:close()
  end
  self.host:stop_intervals()
end

-- The command ends: reaped (its exit code, rusage and signal); the
-- features read what they need before and after.
function Run:_reap()
  local ended = { end_ms = self.exit_ms or math.floor(core.realtime() * 1000) }
  if not self.proc then
    return ended
  end
  for _, f in ipairs(self:active()) do
    if f.d.before_reap then
      f.d.before_reap(self.states[f.name])
    end
  end
  ended.code, ended.rusage = self.proc:wait()
  if self.proc.signal then
    -- killed by a signal: which one, and whether it dumped core
    ended.signal, ended.core_dumped = denet.signal_name(self.proc.signal), self.proc.core_dumped
  end
  for _, f in ipairs(self:active()) do
    if f.d.after_reap then
      f.d.after_reap(self.states[f.name], ended.rusage)
    end
  end
  return ended
end

-- The summary every run ends with: the monitor's, or the run's own.
function Run:_summary(ended)
  local s
  if self.states.monitor then
    s = features.get("monitor").report(self.states.monitor, ended)
  else
    s = { kind = "summary", exit_code = ended.code == nil and json.null or ended.code, ebpf = self:figures(),
      total_time_secs = require("denet.util").round(math.max(0, ended.end_ms / 1000 - (self.t0_real or 0)), 3) }
  end
  s.signal, s.core_dumped = ended.signal, ended.core_dumped
  return s
end

-- The final reports of the features whose hooks a plugin has or that the
-- caller asked for; each to its hook.
function Run:_reports(ended)
  local asked = {}
  for _, n in ipairs(self.opts.reports or {}) do
    asked[n] = true
  end
  for _, f in ipairs(self:active()) do
    local d = f.d
    if f.name ~= "monitor" and d.report and (asked[f.name] or (d.hook and self.host:has(d.hook))) then
      self.reports[f.name] = d.report(self.states[f.name], ended)
      if d.hook then
        self.host:call(d.hook, self.reports[f.name])
      end
    end
  end
end

--- End the run: the command reaped, the probes detached (the maps hold
--- still for the final reads), every feature's final figures, the hooks'
--- reports, the plugins' on_end (what they return goes under
--- plugins.<name> of the summary), the last /metrics. Returns the summary
--- record, the command's exit code, and the reports asked for.
function Run:finish()
  if self.ended then
    return self.summary, self.exit_code, self.reports
  end
  self:_stop_sources()
  local ended = self:_reap()
  if self.bpf then
    self.bpf:detach_all()
  end
  for _, f in ipairs(self:active()) do
    if f.d.stop then
      f.d.stop(self.states[f.name])
    end
  end
  if self.opts.on_tick then
    self.opts.on_tick(self, true)
  end
  self:_reports(ended)
  local s = self:_summary(ended)
  for name, v in pairs(self.host:call("on_end", s)) do
    if type(v) == "table" then
      s.plugins = s.plugins or {}
      s.plugins[name] = v
    end
  end
  self.ended, self.summary, self.exit_code = true, s, ended.code
  self:publish(true)
  if self.opts.on_end then
    self.opts.on_end(s, ended.code, self.reports)
  end
  if self.exporter then
    -- the final figures, until a scrape has them (or the linger is over);
    -- a run ended by Ctrl-C or SIGTERM does not wait
    if not self.signal_code then
      self.exporter:linger(self.opts.prometheus_linger)
    end
    self.exporter:close()
  end
  self:close()
  return s, ended.code, self.reports
end

--- Stop now (Python was interrupted, or gave up): the command, if denet
--- started it, is sent SIGTERM, then SIGKILL after 2 s, and the run ends.
function Run:abort()
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

--- Release the program and the features (finish() does; a run read live,
--- as the REPL's, is closed so).
function Run:close()
  if self.closed then
    return
  end
  self.closed = true
  self:_stop_sources()
  for _, f in ipairs(self:active()) do
    local st = self.states[f.name]
    if st and f.d.close then
      f.d.close(st)
    end
  end
  if self.tree then
    self.tree:close()
  end
end

--- A record as the run writes it: the monitor's fast encoding of samples,
--- or denet.json.
function Run:encode(rec)
  local m = self.states.monitor
  if m and rec.kind == "tree" then
    return features.get("monitor").encode(m, rec)
  end
  return json.encode(rec)
end

return M
