-- How long detaching takes: four tracepoints attached as perf events
-- (TRACEPOINT_PROBE) against the same four as raw tracepoints, each set
-- closed at once. Prints "perf_tp_ms=… raw_tp_ms=…" on stdout.
local BPF = require("denet.bpf")
local core = require("denet.core")

local EVENTS = { { "sched", "sched_switch" }, { "sched", "sched_process_exit" }, { "task", "task_newtask" },
  { "sched", "sched_process_exec" } }

local function program(raw)
  local out = {}
  for _, e in ipairs(EVENTS) do
    if raw then
      out[#out + 1] = string.format("RAW_TRACEPOINT_PROBE(%s) { return 0; }", e[2])
    else
      out[#out + 1] = string.format("TRACEPOINT_PROBE(%s, %s) { return 0; }", e[1], e[2])
    end
  end
  return table.concat(out, "\n")
end

local function detach_ms(raw)
  local b = BPF.new{ text = program(raw) }
  local t = core.monotonic()
  b:close()
  return (core.monotonic() - t) * 1000
end

print(string.format("perf_tp_ms=%.1f raw_tp_ms=%.1f", detach_ms(false), detach_ms(true)))
