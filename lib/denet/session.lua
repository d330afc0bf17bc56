-- denet.session: the library, served to another program over a pair of
-- pipes (`denet session --in FD --out FD`): how the Python binding
-- (python/denet) reaches the one core. One JSON request per line in, one
-- JSON reply per line out:
--
--   {"op": "start", "cmd": [...] | "pid": N, ...}   -> {"ok": true, "pid": N, "metadata": "...", "env": "..."|null}
--   {"op": "sample"}                                 -> {"ok": true, "sample": "<record JSON>" | null}
--   {"op": "step", "seconds": 0.2}                   -> {"ok": true, "state": "running"|"exit"|..., "samples": [...]}
--   {"op": "finish"} / {"op": "abort"}               -> {"ok": true, "summary": "<JSON>", "exit_code": n|null,
--                                                       "samples": [...]}
--   {"op": "offcpu"|"syscalls"|<any feature with a script>, ...}
--                                                    -> {"ok": true, "report": {...}, "exit_code": n|null}
--   {"op": "summary_file", "path": P}                -> {"ok": true, "summary": "<JSON>"}
--   {"op": "summary_records", "records": [...], "elapsed": s} -> {"ok": true, "summary": "<JSON>"}
--   {"op": "running"}                                -> {"ok": true, "running": bool}
--   {"op": "quit"}
--
-- A failure is {"ok": false, "error": "<the one line denet prints>",
-- "code": 2, "errno": n} (1 for a bug, with its traceback in "error";
-- errno when the system said why: a file or command not found, a process
-- gone, a file with no data). Records travel as
-- the JSON text denet writes, so integers stay exact. While it waits for a
-- request the event loop keeps running (buffers drained, samples taken on
-- the schedule: step and finish give every one taken since the last
-- reply); when the other
-- side goes away (EOF) the run is aborted: a command denet started gets
-- SIGTERM, and everything is released.
local core = require("denet.core")
local denet = require("denet")
local errors = require("denet.errors")
local json = require("denet.json")

local M = {}

local ESRCH, ENODATA = 3, 61

local Server = {}
Server.__index = Server

-- a request's fields to a monitor run's options (denet.runner): the
-- monitor's, and every feature the monitor can add (offcpu, syscalls: the
-- registry's monitor flags)
local function session_opts(req, self)
  local function ms(v, default)
    return (tonumber(v) or default) / 1000
  end
  local target = req.pid and { pids = { tonumber(req.pid) } } or { cmd = req.cmd }
  local o = {
    target = target,
    features = require("denet.features").for_monitor({ interval = ms(req.base_interval_ms, 100),
      max_interval = ms(req.max_interval_ms, 1000), since_process_start = req.since_process_start == true,
      exclude_children = req.include_children == false, write_env = req.write_env == true,
      gpu = req.enable_gpu == true }, req),
    on_record = function(rec)
      self:_record(rec)
    end,
  }
  if req.plugins and #req.plugins > 0 then
    o.host = require("denet.plugins").load_all(req.plugins, { allow_untrusted = req.allow_untrusted })
  end
  -- the command's output to files (the spawn opens them in the child)
  for _, k in ipairs({ "stdout", "stderr" }) do
    if type(req[k]) == "string" then
      o[k] = req[k]
    end
  end
  return o
end

function Server:_record(rec)
  local text = self.session and self.session:encode(rec) or json.encode(rec)
  if rec.kind == "metadata" then
    self.metadata = text
  elseif rec.kind == "env" then
    self.env = text
  else
    self.pending[#self.pending + 1] = text
  end
end

local OPS = {}

function OPS.start(self, req)
  if self.session then
    errors.raise("this session already monitors a process")
  end
  if req.cmd ~= nil and (type(req.cmd) ~= "table" or #req.cmd == 0) then
    errors.raise("the command is empty: give a list like ['sleep', '1']")
  end
  if req.pid ~= nil then
    local pid = tonumber(req.pid)
    if not pid or pid <= 0 or pid ~= math.floor(pid) then
      errors.raise(string.format("not a PID: %s", tostring(req.pid)))
    end
    local _, _, _, state = core.read_stat(pid)
    if not state or state == string.byte("Z") then
      errors.raise(string.format("no such process: %d", pid), 2, ESRCH)
    end
  end
  self.session = require("denet.runner").new(session_opts(req, self))
  self.session:start()
  -- the samples of start() (none) are dropped: sample and step give them
  self.pending = {}
  return { pid = self.session.root, metadata = self.metadata, env = self.env or json.null }
end

local function need(self)
  if not self.session then
    errors.raise("nothing is monitored yet (start first)")
  end
  return self.session
end

function OPS.sample(self)
  local s = need(self)
  self.pending = {}
  local rec = s:sample_now()
  return { sample = rec and (self.pending[#self.pending] or json.encode(rec)) or json.null }
end

-- (the samples the schedule took while the session waited for this
-- request are given too: the summary counts them)
function OPS.step(self, req)
  local s = need(self)
  local state = s:step(tonumber(req.seconds) or 0.25)
  local samples = json.array(self.pending)
  self.pending = {}
  return { state = state, samples = samples }
end

local function finish(self, abort)
  local s = need(self)
  local summary, code
  if abort then
    summary, code = s:abort()
  else
    summary, code = s:finish()
  end
  -- and the samples taken since the last step
  local samples = json.array(self.pending)
  self.pending = {}
  return { summary = json.encode(summary), exit_code = code == nil and json.null or code, samples = samples }
end

function OPS.finish(self)
  return finish(self, false)
end

function OPS.abort(self)
  return finish(self, true)
end

local REPORT_KEYS = { op = true, cmd = true, pid = true, duration = true, plugins = true, allow_untrusted = true }

-- A feature's run, as its script runs it, for a request: the report and
-- the command's exit code. The request's other fields are the feature's
-- options.
local function report_op(name)
  return function(_, req)
    if req.cmd ~= nil and (type(req.cmd) ~= "table" or #req.cmd == 0) then
      errors.raise("the command is empty: give a list like ['sleep', '1']")
    end
    local d = require("denet.features").get(name)
    local fopts, known = {}, {}
    for _, k in ipairs(d.options or {}) do
      known[k] = true
    end
    for k, v in pairs(req) do
      if not REPORT_KEYS[k] then
        if not known[k] then
          errors.raise(string.format("%s: unknown option '%s' (known: %s)", name, k,
            table.concat(d.options or {}, ", ")))
        end
        fopts[k] = v
      end
    end
    local host = req.plugins and require("denet.plugins").load_all(req.plugins,
      { allow_untrusted = req.allow_untrusted })
    local run = require("denet.runner").new{ target = { cmd = req.cmd, pids = req.pid and { tonumber(req.pid) } },
      features = { [name] = fopts }, duration = tonumber(req.duration), host = host, reports = { name } }
    run:start()
    run:run_to_end()
    local _, code, reports = run:finish()
    local report = reports[name]
    for _, st in ipairs(report.stacks or {}) do
      st.user, st.user_mods = nil, nil
    end
    return { report = report, exit_code = code == nil and json.null or code }
  end
end

-- every feature that runs alone as a script is a request of its name
for _, d in ipairs(require("denet.features").list("script")) do
  OPS[d.name] = report_op(d.name)
end

function OPS.summary_file(_, req)
  local summary = require("denet.monitor.summary")
  local s, n = summary.from_file(tostring(req.path))
  if n == 0 then
    errors.raise(string.format("%s holds no samples: nothing to summarize", tostring(req.path)), 2, ENODATA)
  end
  return { summary = json.encode(s:result()) }
end

function OPS.summary_records(_, req)
  local summary = require("denet.monitor.summary")
  local s = summary.new()
  for _, r in ipairs(req.records or {}) do
    if type(r) == "string" then
      r = json.try_decode(r)
    end
    s:add(r)
  end
  local res = s:result()
  if tonumber(req.elapsed) then
    res.total_time_secs = tonumber(req.elapsed)
  end
  return { summary = json.encode(res) }
end

function OPS.running(self)
  return { running = self.session ~= nil and self.session:running() }
end

function OPS.quit(self)
  self.quit = true
  return {}
end

--- Serve requests from fd `input`, replies to fd `output`, until quit or
--- EOF. Returns the exit code.
function M.serve(input, output)
  local inf = assert(io.open("/proc/self/fd/" .. input, "r"))
  local outf = assert(io.open("/proc/self/fd/" .. output, "w"))
  outf:setvbuf("no")
  local self = setmetatable({ pending = {} }, Server)
  local ready
  local watch = denet.watch_fd(input, function()
    ready = true
  end)
  while not self.quit do
    -- wait for a request, the loop running meanwhile (the programs'
    -- buffers are drained; signals do not end a session: its client does)
    ready = false
    local signalled = false
    denet.with_signals_deferred(function()
      while not ready and not signalled do
        local _, sig = denet.poll(-1)
        signalled = sig ~= nil and sig ~= 0
      end
    end)
    -- a signal ends the session as the client's going away does
    local line = not signalled and inf:read("*l")
    if not line then
      break -- the client went away
    end
    local reply
    local req = json.try_decode(line)
    if type(req) == "table" then
      -- null is "not given"
      for k, v in pairs(req) do
        if v == json.null then
          req[k] = nil
        end
      end
    end
    if type(req) ~= "table" or type(req.op) ~= "string" or not OPS[req.op] then
      reply = { ok = false, error = "bad request: " .. line:sub(1, 200), code = 2 }
    else
      local ok, res = xpcall(function()
        return OPS[req.op](self, req)
      end, function(e)
        if errors.is_user(e) or errors.is_interrupt(e) then
          return e
        end
        return debug.traceback(tostring(e), 2)
      end)
      if ok then
        res.ok = true
        reply = res
      elseif type(res) == "table" then
        reply = { ok = false, error = tostring(res.message or res), code = res.code or 2, errno = rawget(res, "errno") }
      else
        reply = { ok = false, error = tostring(res), code = 1 }
      end
    end
    outf:write(json.encode(reply), "\n")
  end
  watch:close()
  if self.session and not self.session.ended then
    pcall(self.session.abort, self.session)
  end
  return 0
end

return M
