-- Off-CPU analysis (bpf-src/offcpu.c, lib/denet/offcpu/): where and why
-- threads block, by category, with kernel and user stacks. The same
-- descriptor serves `denet script offcpu`, `denet run --offcpu`, the
-- Python binding and the REPL, so they give the same figures.
local kernel = require("denet.kernel")
local trace = require("denet.offcpu.trace")

-- where this kernel's BTF places the task_struct fields offcpu.c reads
local function cflags()
  local flags = { "-DDN_HOOK_OFFCPU" }
  -- kernel threads are told apart by task_struct.flags
  local btf = kernel.has("btf") and require("denet.btf")
  local off = btf and btf.offset_of("task_struct", "flags")
  if off then
    flags[#flags + 1] = "-DDN_TASK_FLAGS_OFF=" .. off
  end
  -- on-CPU time is the kernel's own count of each thread's CPU time
  local runtime = btf and btf.offset_of("task_struct", "se.sum_exec_runtime")
  if runtime then
    flags[#flags + 1] = "-DDN_TASK_RUNTIME_OFF=" .. runtime
    if kernel.has("task_pt_regs") then
      -- (bpf_get_current_task_btf: the field is read with a plain load)
      flags[#flags + 1] = "-DDN_TASK_BTF_LOAD"
    end
  end
  return flags
end

return {
  name = "offcpu",
  description = "off-CPU time: where and why threads block (sleep, lock, io, net, ipc, poll, paging, runqueue), "
    .. "with kernel and user stacks",
  bpf = {
    file = "offcpu.c",
    order = 50,
    needs = { "tree", "insys", "unwind", "pyframes", "switch" },
    cflags = cflags,
    variants = {
      { requires = { "btf" }, otherwise = { note = "kernel threads cannot be told apart: their missing user "
        .. "stacks count as unread" } },
    },
    options = {
      { flag = "-DDN_KSTACK_REUSE", also = { "-DDN_KSTACK_VERIFY" }, requires = { "task_pt_regs", "ringbuf" },
        note = "kernel stacks are walked at every switch (no stack reuse)" },
      { flag = "-DDN_USTACK_REUSE", also = { "-DDN_USTACK_VERIFY" }, requires = { "task_pt_regs", "ringbuf" },
        note = "user stacks are walked at every switch (no stack reuse)" },
      { flag = "-DDN_DWARF_UNWIND", also = { "-DDN_PYTHON" }, requires = { "task_pt_regs", "ringbuf" },
        note = "user stacks are walked by frame pointers (functions without them are missing)" },
      { flag = "-DDN_LEAF_UNWIND", requires = { "task_pt_regs", "ringbuf" },
        note = "callers of functions without frame pointers (libc's) are missing from user stacks" },
    },
  },
  options = trace.OPTS,
  config = { map = "dn_offcpu_cfg", values = trace.config },
  plan = trace.plan,
  prepare = trace.prepare,
  before_attach = trace.before_attach,
  start = function(ctx, opts, pre)
    local t = trace.new(ctx, opts, pre)
    -- mappings are captured at intervals, and at each exec of a traced
    -- process (on_process, below), so stacks of processes that exit
    -- before the report still resolve
    ctx:every(0.25, function()
      t:capture()
    end)
    -- the unwinder's mappings of processes that have exited go
    ctx:every(2, function()
      t.engine:sweep()
    end)
    -- the report names kernel frames: read the kernel's symbols while
    -- tracing (on a thread of their own: the loop must keep up with the
    -- processes that start and exit meanwhile), once the start's burst of
    -- stacks to learn is through
    if not opts.user_only then
      ctx:after(0.2, require("denet.syms").load_kernel)
    end
    return t
  end,
  -- a traced process exec'd: the capture of its old image must not name
  -- the new one's frames (the command's own exec included: it was held
  -- as a copy of denet); one forked maps what its parent did
  on_process = function(t, ev)
    if ev.kind == "exec" then
      t:exec(ev.pid)
    elseif ev.kind == "fork" then
      t:fork(ev.pid, ev.ppid)
    end
  end,
  stop = function(t)
    t:stop()
  end,
  figures = function(t)
    return require("denet.offcpu").figures(t)
  end,
  report = function(t)
    return require("denet.offcpu").report(t)
  end,
  hook = "on_offcpu",
  -- a report as one HTML file (denet.export.html) and as a pprof profile
  html = function(report)
    return require("denet.export.html").offcpu(report)
  end,
  pprof = function(path, report)
    require("denet.export.pprof").write(path, report)
  end,
  metrics = function(fams, t, ident)
    require("denet.metrics").add_offcpu(fams, require("denet.offcpu").figures(t), ident)
  end,
  monitor = { flag = "offcpu", help = "also off-CPU time of the tree per sample (aggregated.ebpf.offcpu)" },
  script = "offcpu",
  top = function(report, n)
    local lines = {}
    for i, s in ipairs(report.stacks) do
      if i > (n or 5) then
        break
      end
      lines[#lines + 1] = string.format("%10.1f ms  %-8s %-16s %s", s.us / 1000, s.category, s.comm,
        table.concat(s.frames, ";"))
    end
    return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
  end,
}
