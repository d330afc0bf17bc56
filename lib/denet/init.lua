-- denet: processes, time and the event loop for scripts.
--
--   local denet = require("denet")
--   local p = denet.spawn({ "./server", "--port", "8080" })  -- held before exec
--   ... attach probes ...
--   p:resume()
--   local code, rusage = p:wait()
--
-- The loop itself is C (host/dn_loop.c): BPF buffers, timers, children and
-- signals are waited on together, and Lua callbacks are called from C.
-- This module gives it a Lua shape: denet.every/after (timers),
-- denet.poll (one round), denet.run (until stopped), denet.sleep.
local core = require("denet.core")
local errors = require("denet.errors")

local M = {
  version = core.version,
  root = core.root,
  libbcc_version = core.libbcc_version,
}

local SIGNAMES = { "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL",
  "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP",
  "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO",
  "SIGPWR", "SIGSYS" }
M.SIGHUP, M.SIGINT, M.SIGKILL, M.SIGTERM = 1, 2, 9, 15
local SI_KERNEL = 0x80

--- Seconds on the monotonic clock (for intervals).
M.clock = core.monotonic
M.monotonic = core.monotonic
--- Nanoseconds on the monotonic clock, the clock of bpf_ktime_get_ns().
M.monotonic_ns = core.monotonic_ns
--- Seconds since the Unix epoch (for timestamps).
M.time = core.realtime

--- The name of a signal number ("SIGSEGV"), or "signal N".
function M.signal_name(sig)
  return SIGNAMES[sig] or ("signal " .. tostring(sig))
end

-- Raise the error a signal raises in running code (exit 128+sig).
local function interrupt(sig)
  core.raise_interrupt(sig)
end

---------------------------------------------------------------------------
-- loop sources

local Source = {}
Source.__index = Source

function Source:close()
  if self.id then
    core.loop_close(self.id)
    self.id = nil
  end
end

local function source(id)
  return setmetatable({ id = id }, Source)
end
M._source = source

--- Call fn(expirations) every `interval` seconds, first after `first`
--- (default: one interval). Absolute deadlines: no drift. Returns a source
--- with :close().
function M.every(interval, fn, first)
  if type(interval) ~= "number" or interval <= 0 then
    error("denet.every: interval must be a positive number of seconds", 2)
  end
  local id = assert(core.loop_timer(first or interval, interval, fn))
  return source(id)
end

--- Call fn() once after `delay` seconds. Returns a source with :close().
function M.after(delay, fn)
  local s
  local id = assert(core.loop_timer(delay, 0, function()
    s:close()
    fn()
  end))
  s = source(id)
  return s
end

--- A timer that fires fn() at absolute times on the monotonic clock
--- (denet.clock()): timer:at(t) arms it for t (re-arming replaces the
--- previous deadline). Deadlines computed from the previous one do not
--- drift.
function M.timer(fn)
  -- created disarmed: a one-shot far in the future, re-armed by :at()
  local id = assert(core.loop_timer(1e9, 0, fn))
  local t = source(id)
  function t:at(deadline)
    return core.loop_timer_at(self.id, deadline, 0)
  end
  return t
end

--- Call fn() whenever fd is readable (level-triggered).
function M.watch_fd(fd, fn)
  return source(assert(core.loop_fd(fd, fn)))
end

local stop_requested = false

-- The hooks running now, innermost last ("plugin x's on_process"): set by
-- the plugin host, named when a wait inside one nests the loop too deep.
local running_hooks = {}

--- (for denet.plugins) A hook starts (name) or ends (nil) running.
function M._hook(name)
  if name then
    running_hooks[#running_hooks + 1] = name
  else
    running_hooks[#running_hooks] = nil
  end
end

--- The deepest the loop nests: a callback that waits (denet.sleep,
--- denet.wait, p:wait()) runs the loop inside the loop; its own source is
--- held meanwhile (not dispatched again), and what arrives for it waits.
M.LOOP_MAX_DEPTH = core.LOOP_MAX_DEPTH

--- One round of the loop for `what` (the waiting call, for the error):
--- what core.loop_poll returns; past LOOP_MAX_DEPTH a user error naming
--- the hook that waited.
function M._poll(timeout, what)
  local n, sig, code = core.loop_poll(timeout)
  if n == nil then
    errors.raise(string.format("%s in %s: callbacks already wait %d deep inside the event loop (at most %d); "
      .. "wait less deep, or not in this hook", what or "denet.poll", running_hooks[#running_hooks] or "a callback",
      code, M.LOOP_MAX_DEPTH))
  end
  return n, sig, code
end
local poll = M._poll

--- Wait up to `timeout` seconds (nil: until something happens) and run the
--- callbacks of what is ready. Returns the number of callbacks run and the
--- signal that arrived meanwhile (0 if none) with its si_code.
function M.poll(timeout)
  return poll(timeout or -1, "denet.poll")
end

--- Make denet.run() return after the current callback.
function M.stop()
  stop_requested = true
end

local RUN_OPTS = { "duration" }

--- Run the loop until denet.stop(), a signal, or opts.duration seconds.
--- Returns the reason: "stopped", "signal" (and the signal number),
--- "timeout".
function M.run(opts)
  errors.check_opts("denet.run", opts, RUN_OPTS)
  opts = opts or {}
  stop_requested = false
  local deadline = opts.duration and (core.monotonic() + opts.duration)
  return M.with_signals_deferred(function()
    while true do
      local timeout = -1
      if deadline then
        timeout = deadline - core.monotonic()
        if timeout <= 0 then
          return "timeout"
        end
      end
      local _, sig = poll(timeout, "denet.run")
      if sig ~= 0 then
        return "signal", sig
      end
      if stop_requested then
        stop_requested = false
        return "stopped"
      end
    end
  end)
end

--- Run fn with signals delivered only through denet.poll's results, not
--- raised as interrupts into running Lua code; for loops that handle
--- signals themselves. Returns what fn returns.
function M.with_signals_deferred(fn, ...)
  core.defer_signals(true)
  local res = { pcall(fn, ...) }
  core.defer_signals(false)
  if not res[1] then
    error(res[2], 0)
  end
  return unpack(res, 2, table.maxn(res))
end

--- Sleep `seconds`, running loop callbacks meanwhile (buffers keep being
--- drained). A SIGINT/SIGTERM raises the interrupt error, as Ctrl-C does
--- in any running code. From a callback (a plugin's hook) the loop runs
--- nested, without that callback's own source (see LOOP_MAX_DEPTH).
function M.sleep(seconds)
  M.wait(nil, seconds, "denet.sleep")
end

--- Wait until cond() is true (checked after each round of the loop) or
--- `timeout` seconds have passed (nil: no limit), running loop callbacks
--- meanwhile, as denet.sleep does. Returns true when cond() held, false
--- at the timeout. what: the caller's name for errors (default
--- "denet.wait").
function M.wait(cond, timeout, what)
  if cond ~= nil and type(cond) ~= "function" then
    error("denet.wait: cond must be a function (or nil: wait the whole timeout)", 2)
  end
  local deadline = timeout and (core.monotonic() + timeout)
  while not (cond and cond()) do
    local left = -1
    if deadline then
      left = deadline - core.monotonic()
      if left <= 0 then
        return false
      end
    end
    local _, sig = poll(left, what or "denet.wait")
    if sig ~= 0 then
      interrupt(sig)
    end
  end
  return true
end

---------------------------------------------------------------------------
-- processes

local Proc = {}
Proc.__index = Proc

local SPAWN_OPTS = { "stdin", "stdout", "stderr", "cwd" }

--- Start argv held before exec. opts: stdin/stdout/stderr ("inherit",
--- "null", a path, or an fd), cwd. Raises a user error naming the command
--- when it cannot be executed.
function M.spawn(argv, opts)
  if type(argv) ~= "table" or #argv == 0 then
    error("denet.spawn: argv must be a non-empty list of strings", 2)
  end
  errors.check_opts("denet.spawn", opts, SPAWN_OPTS)
  local c, msg, errno = core.spawn(argv, opts)
  if not c then
    errors.raise(msg, 2, errno)
  end
  return setmetatable({ c = c, pid = c:pid(), argv = argv }, Proc)
end

--- Let a held process exec its command. Raises a user error when exec
--- fails (not executable, bad interpreter, ...).
function Proc:resume()
  local ok, msg = self.c:resume()
  if not ok then
    self.code = 127
    errors.raise(msg)
  end
  return self
end

--- Is the process held (spawned, not resumed)?
function Proc:held()
  return self.c:held()
end

--- Exit code (or 128+signal), rusage and terminating signal once it has
--- exited; false while it runs. Never blocks. Once it has exited,
--- p.signal is that signal and p.core_dumped says whether it dumped core.
function Proc:try_wait()
  if self.code and self.rusage then
    return self.code, self.rusage, self.signal
  end
  local code, ru, sig, core_dumped = self.c:try_wait()
  if code then
    self.code, self.rusage, self.signal, self.core_dumped = code, ru, sig, core_dumped or false
  end
  return code, ru, sig
end

--- Send a signal (default SIGTERM). Returns true, or nil and a message.
function Proc:kill(sig)
  return self.c:kill(sig or M.SIGTERM)
end

local WAIT_OPTS = { "timeout", "forward" }

--- Wait for the process to exit, running the loop meanwhile (buffer and
--- timer callbacks keep firing). Returns the exit code (128+signal when
--- killed), the rusage of the command and its reaped descendants
--- ({utime, stime, maxrss_kb, minflt, majflt, nvcsw, nivcsw, inblock,
--- oublock}) and the signal that killed it, if any.
---
--- A SIGINT/SIGTERM/SIGHUP sent to denet is passed on to the command (a
--- Ctrl-C from the terminal already reached it and is not sent twice) and
--- raises the interrupt error: the script unwinds.
--- opts.forward: instead, keep waiting for the command to end, as a
--- tracer of it does (perf record -- CMD): a first signal is passed on, a
--- second kills the command (SIGKILL), a third raises the interrupt error.
--- opts.timeout: give up after that many seconds and return nil.
--- A command still running when denet exits is sent SIGTERM.
function Proc:wait(opts)
  errors.check_opts("wait", opts, WAIT_OPTS)
  if self:held() then
    error("wait: the process is still held; call :resume() first", 2)
  end
  local code, ru, sig = self:try_wait()
  if code then
    return code, ru, sig
  end
  opts = opts or {}
  local done = false
  local pidfd = self.c:pidfd()
  local w = M.watch_fd(pidfd, function()
    done = true
  end)
  local deadline = opts.timeout and (core.monotonic() + opts.timeout)
  local signals = 0
  local ok, err = pcall(M.with_signals_deferred, function()
    while not done do
      local timeout = -1
      if deadline then
        timeout = deadline - core.monotonic()
        if timeout <= 0 then
          return
        end
      end
      local _, s, si_code = poll(timeout, "wait")
      if s ~= 0 then
        signals = signals + 1
        local from_terminal = s == M.SIGINT and si_code == SI_KERNEL
        if opts.forward and signals == 2 then
          self:kill(M.SIGKILL)
        elseif opts.forward and signals >= 3 then
          return s
        elseif not from_terminal then
          self:kill(s)
        end
        if not opts.forward then
          return s
        end
      end
    end
  end)
  w:close()
  if not ok then
    error(err, 0)
  end
  if err then
    interrupt(err)
  end
  local code2, ru2, sig2 = self:try_wait()
  if not code2 then
    return nil -- timed out
  end
  return code2, ru2, sig2
end

--- Wait at most `seconds` (nil: as long as it takes); a command still
--- running then is sent SIGTERM, and SIGKILL after `grace` more seconds
--- (default 2). Returns what wait() returns. opts.forward: as wait's.
function Proc:wait_for(seconds, grace, opts)
  errors.check_opts("wait_for", opts, { "forward" })
  local fwd = opts and opts.forward
  if not seconds then
    return self:wait{ forward = fwd }
  end
  local code, ru, sig = self:wait{ timeout = seconds, forward = fwd }
  if code then
    return code, ru, sig
  end
  self:kill(M.SIGTERM)
  code, ru, sig = self:wait{ timeout = grace or 2, forward = fwd }
  if code then
    return code, ru, sig
  end
  self:kill(M.SIGKILL)
  return self:wait{ forward = fwd }
end

function Proc:__tostring()
  return string.format("denet.proc(%d %s)", self.pid, self.argv[1])
end

--- Open path for writing, or raise a user error saying why it cannot be
--- written ("cannot write out.json: Permission denied"). Scripts open
--- their outputs before starting anything, so a bad path runs nothing.
function M.open_output(path)
  local f, err = io.open(path, "w")
  if not f then
    errors.raise(string.format("cannot write %s: %s", path, (err or "?"):gsub("^[^:]*: ", "")))
  end
  return f
end

--- Become (or stop being) the child subreaper: orphaned descendants are
--- re-parented to denet instead of init, so they stay in the tree.
function M.set_subreaper(on)
  return core.set_subreaper(on ~= false)
end

--- Resolve a command name like execvp does: its path, or nil and why.
M.which = core.which

--- Is fd a terminal?
M.isatty = core.isatty

--- Once the BPF programs are compiled: return the compiler's heap and
--- page its libraries out of the resident set. Returns KiB paged out.
M.release_compiler_memory = core.release_compiler_memory

--- Resident set size of denet now, in KiB.
M.rss_kb = core.rss_kb

--- Machine facts: uname fields.
M.uname = core.uname

M.Proc = Proc
return M
