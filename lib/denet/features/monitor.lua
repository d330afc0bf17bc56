-- The process monitor (lib/denet/monitor/, bpf-src/ctxsw.c): CPU, memory,
-- I/O and threads of the tree, sampled on an adaptive schedule, as the
-- original denet's records (env, metadata, tree or sample), with a
-- summary. Its BPF (scheduling counters per process, which say which
-- processes ran since the last sample) is optional: without BPF the tree
-- is found by polling /proc.
local core = require("denet.core")
local json = require("denet.json")
local monitor = require("denet.monitor")
local env = require("denet.monitor.env")
local summary_mod = require("denet.monitor.summary")

local State = {}
State.__index = State

-- the monitor's state in a run: its sampler, summary and records
local function start(ctx, opts)
  if not ctx.root then
    require("denet.errors").bad_call("monitor", "needs a command or a process (target.cmd or target.pids)")
  end
  local self = setmetatable({ ctx = ctx, opts = opts, summary = summary_mod.new() }, State)
  self.m = monitor.new(ctx, opts)
  if opts.write_env then
    self:emit(env.record(ctx.root))
  end
  self.m:start()
  return self
end

function State:emit(rec)
  self.summary:add(rec)
  self.ctx:emit(rec)
end

-- The command runs (it has exec'd: /proc/PID/exe is what runs): the
-- metadata record, then samples on the schedule.
function State:resumed()
  local ctx, procfs = self.ctx, require("denet.procfs")
  local target = ctx.target
  local argv = target.cmd or procfs.cmdline(ctx.root) or {}
  self.metadata = { kind = "metadata", pid = ctx.root, cmd = json.array(argv), executable = procfs.exe(ctx.root)
    or (target.cmd and require("denet").which(target.cmd[1])) or "", t0_ms = self.m.t0_ms,
    capabilities = self.m:capabilities() }
  self:emit(self.metadata)
  self.m:schedule(function(rec)
    self:emit(rec)
  end)
end

-- One sample now, whatever the schedule (Python's sample_once): the
-- record, or nil once the process is gone.
function State:sample_now()
  local rec = self.m:sample()
  if rec then
    self:emit(rec)
  end
  self.m:_check_root_gone()
  return rec
end

-- The summary of the run: ended = { code, rusage, end_ms, signal,
-- core_dumped } from the run.
function State:report(ended)
  local totals = self.totals or self.m:totals()
  self.totals = totals
  totals.end_ms = ended and ended.end_ms or math.floor(core.realtime() * 1000)
  return self.summary:result(ended and ended.code, totals)
end

return {
  name = "monitor",
  description = "CPU, memory, I/O and threads of the tree, sampled on an adaptive schedule, with a summary",
  bpf = { file = "ctxsw.c", order = 20, needs = { "tree", "switch" }, cflags = { "-DDN_HOOK_CTXSW" } },
  options = monitor.OPTS,
  -- the monitor works without BPF too (the tree polled from /proc)
  optional_bpf = true,
  start = start,
  resumed = function(s)
    s:resumed()
  end,
  on_process = function(s, ev)
    s.m:on_process(ev)
  end,
  -- the command is about to be reaped, then was
  before_reap = function(s)
    s.m:before_reap()
  end,
  after_reap = function(s, rusage)
    s.m:after_reap(rusage)
  end,
  report = function(s, ended)
    return s:report(ended)
  end,
  -- the figures of the last record, for /metrics (the final totals at the end)
  metrics = function(fams, s, ident)
    local rec = s.totals or s.m.last_record
    if rec then
      require("denet.metrics").from_record(rec, ident, fams)
    end
    -- the counters and energy so far (the records hold them per interval)
    require("denet.metrics").add_sources(fams, s.m.sources:figures(), ident)
  end,
  encode = function(s, rec)
    return s.m:encode(rec)
  end,
}
