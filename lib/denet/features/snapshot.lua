-- Threads as they are right now (bpf-src/tasks.c, lib/denet/snapshot.lua):
-- a task iterator reads every thread's state, CPU time, saved user
-- registers and kernel stack in one pass, without stopping anything. Used
-- by `offcpu --now` and by off-CPU tracing for the threads blocked when it
-- begins. Built alone (no tree, nothing attached).
local function off(path, alt)
  local btf = require("denet.btf")
  return btf.offset_of("task_struct", path) or (alt and btf.offset_of("task_struct", alt)) or -1
end

return {
  name = "snapshot",
  description = "every thread as it is now: state, CPU time, registers, kernel stack (a task iterator)",
  bpf = {
    file = "tasks.c",
    order = 10,
    standalone = true,
    -- the task_struct fields it reads, where this kernel's BTF puts them
    cflags = function()
      return {
        "-DDN_TASK_PID_OFF=" .. off("pid"), "-DDN_TASK_TGID_OFF=" .. off("tgid"),
        "-DDN_TASK_STATE_OFF=" .. off("__state", "state"), "-DDN_TASK_FLAGS_OFF=" .. off("flags"),
        "-DDN_TASK_CPU_OFF=" .. off("thread_info.cpu", "cpu"), "-DDN_TASK_EXEC_START_OFF=" .. off("se.exec_start"),
        "-DDN_TASK_RUNTIME_OFF=" .. off("se.sum_exec_runtime"), "-DDN_TASK_COMM_OFF=" .. off("comm"),
      }
    end,
  },
}
