-- The one sched_switch probe of a program (bpf-src/switch.c): it calls the
-- hooks of the features composed before it (-DDN_HOOK_*), since libbcc
-- allows one TRACEPOINT_PROBE per tracepoint in a program.
local kernel = require("denet.kernel")

return {
  name = "switch",
  description = "the shared sched_switch probe",
  bpf = {
    file = "switch.c",
    order = 90,
    needs = { "tree" },
    cflags = function()
      -- 5.18+ passes the raw tracepoint prev_state
      local raw = kernel.raw_facts()
      if raw and raw.sched_switch == 4 then
        return { "-DDN_SWITCH_RAW", "-DDN_TASK_PID_OFF=" .. raw.pid }
      end
      return {}
    end,
  },
}
