-- denet.features: the registry of denet's features. Each feature is one
-- descriptor, one file (lib/denet/features/<name>.lua), implementing the
-- small interface below; everything that lists features (the composer,
-- the runner, the monitor, the Python session, the REPL, the man page,
-- /metrics) iterates this registry. A new BPF feature with full parity is
-- one descriptor, its BPF C, its script and its tests.
--
-- A descriptor is a table; every field but `name` may be absent:
--
--   name          the feature's name ("offcpu")
--   description   one line: what it measures
--   bpf           its BPF part: { file = "offcpu.c" (in bpf-src/), order
--                 (its place in the program: smaller first; scripts' own
--                 text goes at 60), needs = { features }, cflags = list or
--                 function(set of parts), variants = { { requires =
--                 { kernel features }, otherwise = { cflags, note } } },
--                 options = { { flag, also, requires, note } },
--                 standalone = true (not built with the tree) }
--   config        { map = "dn_x_cfg", values = function(opts) ... }: the
--                 options whose values change from run to run (thresholds,
--                 filters, targets), written into that BPF map before the
--                 probes are attached, so one compiled program serves them
--                 all and the compile cache hits
--   plan(opts)    the -D flags of opts: what changes the shape of the code
--                 (which parts are in, map sizes, stack kinds); a list
--   prepare(opts) runs before the program is built (loads what must be
--                 ready as the probes go live)
--   before_attach(opts, target, bpf)  once the program is loaded, right
--                 before its probes go live (to read what the window
--                 starts from, to fill maps); what it returns is start's
--                 `pre`
--   start(ctx, opts, pre)  once the program is loaded, attached and the
--                 targets known; returns the feature's state. ctx: the
--                 run (bpf, program, tree, proc, target, t0_ns)
--   resumed(state)  the command (if any) was let go and the window began
--   on_process(state, ev)  a fork, exec or exit in the tree (ev as the
--                 tree's events: kind, pid, ppid, comm)
--   figures(state)    the figures so far, light enough for every sample:
--                 the monitor's aggregated.ebpf.<name>
--   report(state, opts)  the feature's report (its JSON contract in docs/)
--   stop(state)   the probes are detached; read what is final
--   close(state)  release what it holds
--   hook          the plugin hook its report goes to ("on_offcpu")
--   metrics(fams, figures, ident)  its Prometheus families (denet.metrics)
--   monitor       { flag = "offcpu", help = "..." }: `denet run --FLAG`
--                 adds it to the monitor
--   script        the built-in script that runs it alone ("offcpu")
--   top(report, n)  text of its n largest items (the REPL's live:top())
--   html(report)  its report as one HTML page; pprof(path, report) as a
--                 pprof profile
local M = {}

--- Every feature, in the order lists show them and a run starts them
--- (off-CPU analysis first: it reads the threads blocked as tracing
--- begins, the sooner the better).
M.NAMES = { "tree", "switch", "insys", "unwind", "pyframes", "offcpu", "syscalls", "network", "monitor", "snapshot" }

local loaded = {}

--- The descriptor of feature `name`; raises for an unknown one.
function M.get(name)
  local d = loaded[name]
  if d then
    return d
  end
  local known = false
  for _, n in ipairs(M.NAMES) do
    known = known or n == name
  end
  if not known then
    error(string.format("denet.features: no feature named '%s' (known: %s)", tostring(name),
      table.concat(M.NAMES, ", ")), 2)
  end
  d = require("denet.features." .. name)
  assert(d.name == name, "features/" .. name .. ".lua declares another name")
  loaded[name] = d
  return d
end

--- Is there a feature named `name`?
function M.known(name)
  for _, n in ipairs(M.NAMES) do
    if n == name then
      return true
    end
  end
  return false
end

--- The descriptors in order; with `field`, only those that have it.
function M.list(field)
  local out = {}
  for _, n in ipairs(M.NAMES) do
    local d = M.get(n)
    if not field or d[field] ~= nil then
      out[#out + 1] = d
    end
  end
  return out
end

--- The monitor's options that add a feature (`denet run --offcpu`),
--- declared as denet.args takes them.
function M.monitor_args()
  local out = {}
  for _, d in ipairs(M.list("monitor")) do
    out[#out + 1] = { name = d.monitor.flag, type = "bool", help = d.monitor.help }
  end
  return out
end

--- The features of a monitor run: monitor_opts for the monitor, and each
--- feature whose flag is set in `flags` (a table: flags.offcpu = true),
--- with the options its monitor form takes from run_opts (the run's own
--- options: prometheus, ...). flags.enable_ebpf (the original's flag) sets
--- every one of them where BPF can be used, and where it cannot says so
--- and adds none: the monitor runs as without it. Returns { name = options }.
function M.for_monitor(monitor_opts, flags, run_opts)
  local out = { monitor = monitor_opts }
  local all = flags.enable_ebpf and require("denet.tree").bpf_usable()
  if flags.enable_ebpf and not all then
    io.stderr:write("denet: --enable-ebpf: BPF cannot be used here (see denet doctor): no off-CPU, syscall or "
      .. "per-process network figures\n")
  end
  for _, d in ipairs(M.list("monitor")) do
    if flags[d.monitor.flag] or all then
      out[d.name] = d.monitor.options and d.monitor.options(run_opts or {}) or {}
    end
  end
  return out
end

return M
