-- Syscall tracking (bpf-src/syscalls.c, lib/denet/syscalls.lua): counts,
-- errors by errno and latency per syscall, process or thread. The same
-- descriptor serves `denet script syscalls`, `denet run --syscalls`, the
-- Python binding and the REPL.
local syscalls = require("denet.syscalls")

return {
  name = "syscalls",
  description = "syscall counts, errors by errno and latency histograms per syscall, process or thread",
  bpf = { file = "syscalls.c", order = 30, needs = { "tree", "insys" }, cflags = { "-DDN_HOOK_SYSCALLS" } },
  options = syscalls.OPTS,
  config = { map = "dn_sc_cfg", values = syscalls.config, write = syscalls.set_filter },
  plan = syscalls.plan,
  start = function(ctx, opts)
    local t = syscalls.new(ctx, opts)
    if opts.interval then
      -- a report of each interval's calls, to the run's hook
      ctx:every(opts.interval, function()
        ctx:interval("syscalls")
      end)
    end
    return t
  end,
  on_process = function(t, ev)
    t:on_process(ev)
  end,
  figures = function(t)
    return t:figures()
  end,
  interval_report = function(t)
    return t:interval_report()
  end,
  -- the whole run's calls, or with intervals the last interval's
  report = function(t)
    if t.opts.interval then
      return t:interval_report()
    end
    return (t:report())
  end,
  hook = "on_syscalls",
  metrics = function(fams, t, ident)
    require("denet.metrics").add_syscalls(fams, (t:report(nil, {})), ident)
  end,
  monitor = { flag = "syscalls", help = "also syscall counts of the tree per sample (aggregated.ebpf.syscalls)",
    -- Prometheus gets a latency histogram of the syscalls
    options = function(run_opts)
      return { latency = run_opts.prometheus ~= nil }
    end },
  script = "syscalls",
  top = function(report, n)
    local cut = {}
    for k, v in pairs(report) do
      cut[k] = v
    end
    cut.syscalls = {}
    for i = 1, math.min(n or 10, #report.syscalls) do
      cut.syscalls[i] = report.syscalls[i]
    end
    return syscalls.text(cut, report.syscalls[1] and report.syscalls[1].timed ~= nil)
  end,
}
