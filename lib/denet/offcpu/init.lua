-- denet.offcpu: where and why threads block. The kernel side
-- (bpf-src/offcpu.c) sums off-CPU time per (thread, user stack, kernel
-- stack, task state, syscall); this library turns it into reports. Its
-- parts, one job each:
--   denet.offcpu.classify  categories of blocks, state masks
--   denet.offcpu.trace     a tracer of a run's targets (window, threads
--                          blocked before it, learners)
--   denet.offcpu.report    the report and the per-sample figures
--   denet.offcpu.now       where threads are blocked right now (--now)
--   denet.offcpu.render    text, folded stacks, SVG flame graph
-- Stacks are denet.stacks'; the feature (BPF part, options, monitor
-- fields, metrics, plugin hook) is lib/denet/features/offcpu.lua. See
-- docs/offcpu.md.
--
--   local offcpu = require("denet.offcpu")
--   local t = offcpu.start{ roots = { pid } }   -- live, as the REPL does
--   denet.sleep(2); print(offcpu.text(t:report())); t:close()
local classify = require("denet.offcpu.classify")
local report = require("denet.offcpu.report")
local render = require("denet.offcpu.render")
local stacks = require("denet.stacks")
local trace = require("denet.offcpu.trace")

local M = {}

M.category = classify.category
M.state_mask = classify.state_mask
M.duration_text = classify.duration_text
M.DESCRIBE = classify.DESCRIBE

M.text = render.text
M.folded = render.folded
M.svg = render.svg
M.now_text = render.now_text

M.now = require("denet.offcpu.now").now
M.report = report.report
M.figures = report.figures
M.sites = report.sites
M.verdict = report.verdict
M.seed_blocked = trace.seed_blocked

M.STACK_NONE = stacks.STACK_NONE
M.STACK_SNAPSHOT = stacks.STACK_SNAPSHOT
M.LOST_WHY = stacks.LOST_WHY

local Tracer = trace.Tracer

--- The report so far (the JSON contract of docs/offcpu.md).
function Tracer:report()
  return report.report(self)
end

--- The light totals so far (the monitor's aggregated.ebpf.offcpu).
function Tracer:figures()
  return report.figures(self)
end

local START_OPTS = { "roots", "tid" }
for _, k in ipairs(trace.OPTS) do
  START_OPTS[#START_OPTS + 1] = k
end

--- Trace now, until closed: opts.roots = {pid,...} (their trees; none:
--- every process), opts.tid (one thread), and a tracer's options
--- (denet.offcpu.trace.OPTS). Returns the tracer, with :report(),
--- :figures(), :close().
function M.start(opts)
  require("denet.errors").check_opts("offcpu.start", opts, START_OPTS)
  local o = {}
  for _, k in ipairs(trace.OPTS) do
    o[k] = opts[k]
  end
  local run = require("denet.runner").new{ target = { pids = opts.roots, tid = opts.tid }, features = { offcpu = o } }
  run:start()
  local t = run.states.offcpu
  function t.close()
    run:close()
  end
  return t
end

return M
