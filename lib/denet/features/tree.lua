-- The tracked process tree (bpf-src/tree.c), which every feature that
-- watches a target is built with: who is being watched (the tree, the
-- whole machine, or one thread: dn_tree_cfg), forks, execs and exits.
-- The user-space side is denet.tree.
local core = require("denet.core")
local kernel = require("denet.kernel")

-- the tree's probes as raw tracepoints, where the kernel's BTF places
-- what they read
local function cflags()
  local raw = kernel.raw_facts()
  if raw and raw.filename and raw.task_newtask == 2 and raw.sched_process_exec == 3
      and (raw.sched_process_exit or 0) >= 1 then
    local out = { "-DDN_TREE_RAW", "-DDN_TASK_PID_OFF=" .. raw.pid, "-DDN_BPRM_FILENAME_OFF=" .. raw.filename }
    if raw.sched_process_exit == 2 then
      out[#out + 1] = "-DDN_HAVE_GROUP_DEAD"
    end
    return out
  end
  local sys = require("denet.sys")
  local fmt = sys.tracefs() and core.read_file(sys.tracefs() .. "/events/sched/sched_process_exit/format")
  -- 5.16+ says whether the exiting thread was the last of its process
  return fmt and fmt:find("group_dead") and { "-DDN_HAVE_GROUP_DEAD" } or {}
end

-- enum dn_tree_mode (tree.c)
local MODE = { tree = 0, all = 1, tid = 2 }

return {
  name = "tree",
  description = "the tracked process tree: forks, execs and exits of the target and its descendants",
  bpf = {
    file = "tree.c",
    order = 10,
    cflags = cflags,
    variants = {
      { requires = { "ringbuf" }, otherwise = { cflags = { "-DDN_TREE_PERF" },
        note = "process events come through a perf buffer" } },
    },
  },
  -- opts.mode: "tree" (default), "all" (every thread but denet's own) or
  -- "tid" (opts.tid)
  config = {
    map = "dn_tree_cfg",
    values = function(opts)
      return { mode = MODE[opts.mode or "tree"], tid = opts.tid or 0, self_tgid = core.ids().pid }
    end,
  },
}
