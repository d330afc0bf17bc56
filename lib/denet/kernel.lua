-- denet.kernel: what the running kernel's BPF can do, asked of the
-- kernel once per run (host/dn_feat.c), and what each missing feature
-- costs. The composer (denet.compose) picks a program's variant from it;
-- `denet doctor` and docs/platform.md list the same table.
--
-- DENET_DISABLE=name,name,... makes denet act as if the kernel lacked
-- those features, so every fallback can be exercised on any kernel.
local core = require("denet.core")
local sys = require("denet.sys")

local M = {}

--- Every feature: name, the kernel that brought it, what it is, and how
--- to ask the kernel (a function returning true/false). Those built on
--- BTF are off with it (DENET_DISABLE=btf turns them off too).
M.LIST = {
  { name = "btf", since = "5.4", what = "the kernel's BTF (/sys/kernel/btf/vmlinux)",
    probe = function()
      return sys.has_btf()
    end },
  { name = "raw_tracepoint", since = "4.17", what = "raw tracepoint programs",
    probe = function()
      return core.feature_probe("raw_tracepoint")
    end },
  { name = "batch", since = "5.6", what = "batch map lookups",
    probe = function()
      return core.feature_probe("batch")
    end },
  { name = "ringbuf", since = "5.8", what = "the BPF ring buffer",
    probe = function()
      return core.feature_probe("ringbuf") and core.feature_probe("ringbuf_helper")
    end },
  { name = "get_task_stack", since = "5.9", what = "bpf_get_task_stack",
    probe = function()
      return core.feature_probe("get_task_stack")
    end },
  { name = "task_storage", since = "5.11", what = "task storage and bpf_get_current_task_btf",
    probe = function()
      return M.has("btf") and core.feature_probe("task_storage_map") and core.feature_probe("task_storage_helper")
        and core.feature_probe("current_task_btf")
    end },
  { name = "task_pt_regs", since = "5.15", what = "bpf_task_pt_regs",
    probe = function()
      return M.has("btf") and core.feature_probe("current_task_btf") and core.feature_probe("task_pt_regs")
    end },
  { name = "task_iter", since = "5.15", what = "task iterators with task stacks and saved user registers",
    probe = function()
      return M.has("task_pt_regs") and M.has("get_task_stack")
    end },
  { name = "btf_types", since = "5.4", what = "kernel struct layouts from BTF, for scripts that read kernel structs",
    probe = function()
      return M.has("btf")
    end },
  { name = "sock_length", since = "6.3",
    what = "the socket layer's send and receive tracepoints (sock:sock_send_length, sock_recv_length)",
    probe = function()
      return sys.tracepoint_exists("sock", "sock_send_length") and sys.tracepoint_exists("sock", "sock_recv_length")
    end },
  { name = "kprobes", since = "4.1", what = "kprobes (optional: scripts that ask for them)",
    probe = function()
      return sys.has_kprobes()
    end },
  { name = "fentry", since = "5.5", what = "fentry/fexit programs (optional: scripts that ask for them)",
    probe = function()
      return M.has("btf") and core.feature_probe("tracing_prog")
    end },
}

local BY_NAME = {}
for _, f in ipairs(M.LIST) do
  BY_NAME[f.name] = f
end

local disabled
--- The set of features DENET_DISABLE turns off (unknown names get one
--- line, once).
function M.disabled()
  if disabled then
    return disabled
  end
  disabled = {}
  for name in (os.getenv("DENET_DISABLE") or ""):gmatch("[^,%s]+") do
    if BY_NAME[name] then
      disabled[name] = true
    else
      local known = {}
      for _, f in ipairs(M.LIST) do
        known[#known + 1] = f.name
      end
      io.stderr:write(string.format("denet: DENET_DISABLE: no feature named '%s' (known: %s)\n", name,
        table.concat(known, ", ")))
    end
  end
  return disabled
end

local cache = {}
--- Does the kernel have feature `name` (and is it not disabled)? Probed
--- once per run; a probe that cannot run (no privileges) counts as no.
function M.has(name)
  local f = BY_NAME[name]
  if not f then
    error("features.has: no feature named '" .. tostring(name) .. "'", 2)
  end
  if M.disabled()[name] then
    return false, "disabled by DENET_DISABLE"
  end
  if cache[name] == nil then
    local ok, r = pcall(f.probe)
    cache[name] = ok and r == true
  end
  return cache[name]
end

--- Every feature with its state: { name, since, what, present, disabled }.
function M.report()
  local out = {}
  for _, f in ipairs(M.LIST) do
    local off = M.disabled()[f.name] or false
    out[#out + 1] = { name = f.name, since = f.since, what = f.what, disabled = off, present = M.has(f.name) }
  end
  return out
end

local raw_facts_cache
--- What raw tracepoints need of kernel structs, from the BTF (remembered
--- per run): { pid = offset of task_struct.pid, filename = of
--- linux_binprm.filename, <tracepoint> = its number of arguments for
--- task_newtask, sched_process_exec, sched_process_exit, sched_switch };
--- nil without BTF or raw tracepoints (DENET_DISABLE can turn either
--- off). Attached as raw tracepoints, probes detach at once; as perf
--- events each tracepoint's detach waits for RCU grace periods.
function M.raw_facts()
  if raw_facts_cache ~= nil then
    return raw_facts_cache or nil
  end
  raw_facts_cache = false
  if not M.has("raw_tracepoint") or not M.has("btf") then
    return nil
  end
  local btf = require("denet.btf")
  local f = { pid = btf.offset_of("task_struct", "pid"), filename = btf.offset_of("linux_binprm", "filename") }
  if not f.pid then
    return nil
  end
  for _, tp in ipairs({ "task_newtask", "sched_process_exec", "sched_process_exit", "sched_switch" }) do
    f[tp] = btf.raw_tp_nargs(tp)
  end
  raw_facts_cache = f
  return f
end

--- Forget the probes (for tests that change DENET_DISABLE).
function M.reset()
  cache, disabled, raw_facts_cache = {}, nil, nil
end

return M
