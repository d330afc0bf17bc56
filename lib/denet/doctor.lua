-- denet.doctor: can BPF work here? One line per check, ✓ or ✗ with the
-- fix. Each check tries the real thing where it can (creating a map,
-- opening a perf event, compiling, loading and attaching a program), so a
-- ✓ means denet's own code path works. Exit code 1 when BPF cannot work
-- at all (privileges, the bpf syscall, tracefs, headers, or the end-to-end
-- tracepoint test failed), else 0.
local core = require("denet.core")
local sys = require("denet.sys")

local M = {}

local MAP_ARRAY = 2
local PROG_TRACEPOINT, PROG_KPROBE, PROG_TRACING = 5, 2, 26

local function first_line(s)
  s = tostring(s or "")
  for line in s:gmatch("[^\n]+") do
    if line:find("rror") or line:find("failed") then
      return line
    end
  end
  return s:match("[^\n]+") or s
end

-- Compile, load and attach a small program; returns ok, detail.
local function try_program(text, fn, prog_type, attach)
  local m, diag = core.bpf_compile(text, false, {})
  if not m then
    return false, first_line(diag)
  end
  local fd, log, errno = m:load(fn, prog_type)
  if not fd then
    m:close()
    if log and log:find("%S") then
      return false, first_line(log)
    end
    return false, "the kernel refused to load it: " .. core.strerror(errno or 0)
  end
  local h, msg = attach(m, fd)
  m:close()
  if not h then
    return false, msg
  end
  return true
end

-- The machine: privileges, the bpf syscall, tracefs, headers, BTF, perf
-- events. Returns whether a program can be compiled and attached here.
local function machine_checks(add)
  local priv_ok, who = sys.privileges()
  add("privileges", priv_ok, who, "run as root, or grant CAP_BPF and CAP_PERFMON", true)

  local fd, err = core.map_create(MAP_ARRAY, "dn_doctor", 4, 8, 1, 0)
  if fd then
    core.close_fd(fd)
  end
  add("BPF syscall", fd ~= nil, fd and "map created" or err,
    "needs a kernel with CONFIG_BPF_SYSCALL and the privileges above", true)

  local tfs = sys.tracefs()
  add("tracefs", tfs ~= nil, tfs or "not mounted", "mount -t tracefs tracefs /sys/kernel/tracing", true)

  local hdr, how = sys.kernel_headers()
  add("kernel headers", hdr ~= nil, hdr and string.format("libbcc uses %s (%s)", hdr, how) or ("none at " .. how),
    "run tools/setup.sh (installs linux-headers-amd64 and links it into /lib/modules), or install your "
      .. "kernel's headers", true)

  add("BTF", sys.has_btf(), sys.has_btf() and "/sys/kernel/btf/vmlinux" or "no /sys/kernel/btf/vmlinux",
    "a kernel built with CONFIG_DEBUG_INFO_BTF; only needed for fentry and struct offsets", false)

  local pe, perr = core.perf_event_probe(sys.online_cpus()[1] or 0)
  add("perf events", pe ~= nil, pe and "software cpu-clock event opens" or perr,
    "needs CAP_PERFMON or kernel.perf_event_paranoid <= 1", false)
  return priv_ok and hdr ~= nil and tfs ~= nil
end

-- The real thing, end to end: a tracepoint program compiled, loaded and
-- attached; kprobes and fentry, which denet's built-ins do without.
local function program_checks(add)
  local t0 = core.monotonic()
  local ok, detail = try_program([[
BPF_ARRAY(n, u64, 1);
TRACEPOINT_PROBE(sched, sched_switch) { int k = 0; u64 *v = n.lookup(&k); if (v) (*v)++; return 0; }
]], "tracepoint__sched__sched_switch", PROG_TRACEPOINT, function(m, pfd)
    return m:attach_tracepoint(pfd, "sched", "sched_switch")
  end)
  add("tracepoint program", ok,
    ok and string.format("compiled, loaded and attached in %.2f s", core.monotonic() - t0) or detail,
    "see the lines above; denet doctor checks each piece", true)

  local kok, kdetail = false, "no kprobe PMU and no kprobe_events in tracefs"
  if sys.has_kprobes() then
    kok, kdetail = try_program("int kprobe__do_nanosleep(void *ctx) { return 0; }", "kprobe__do_nanosleep",
      PROG_KPROBE, function(m, pfd)
        return m:attach_kprobe(pfd, false, "dn_doctor_" .. sys.pid(), "do_nanosleep")
      end)
  end
  add("kprobes", kok, kok and "kprobe on do_nanosleep attached" or kdetail,
    "optional: denet's built-ins use tracepoints only", false)

  local fok, fdetail = false, "no BTF"
  if sys.has_btf() then
    fok, fdetail = try_program("KFUNC_PROBE(do_nanosleep) { return 0; }", "kfunc__do_nanosleep", PROG_TRACING,
      function(m, pfd)
        return m:attach_kfunc(pfd)
      end)
  end
  add("fentry", fok, fok and "fentry on do_nanosleep attached" or (fdetail or "load failed"),
    "optional: denet's built-ins use tracepoints only", false)
end

-- Do the headers lay kernel structs out as this kernel does?
local function headers_check(add)
  local ktypes = require("denet.ktypes")
  local diff, why = ktypes.compare({ { "task_struct", "pid" }, { "task_struct", "tgid" },
    { "task_struct", "comm" }, { "task_struct", "real_parent" }, { "task_struct", "mm" },
    { "task_struct", "flags" }, { "mm_struct", "total_vm" } }, { "#include <linux/sched.h>",
    "#include <linux/mm_types.h>" })
  local rel = ktypes.headers_release() or "?"
  if diff and #diff == 0 then
    add("headers vs kernel types", true, string.format("task_struct and mm_struct offsets of the headers (%s) "
      .. "match the kernel's BTF", rel))
    return
  end
  local transparent = ktypes.transparent()
  add("headers vs kernel types", transparent,
    diff and string.format("the headers (%s) are not this kernel's (%s): %s%s", rel, core.uname().release,
      table.concat(diff, ", ", 1, math.min(#diff, 3)), transparent and "; scripts that read kernel structs "
      .. "get the kernel's own layouts from its BTF" or "") or ("cannot compare: " .. tostring(why)),
    transparent and "" or "install the headers of the running kernel (or use a kernel with BTF, from which "
      .. "denet takes struct layouts)", false)
end

--- Every check: { name, ok, detail, fix, fatal } in order.
function M.checks()
  local out = {}
  local function add(name, ok, detail, fix, fatal)
    out[#out + 1] = { name = name, ok = ok, detail = detail, fix = fix, fatal = fatal }
  end
  local can_compile = machine_checks(add)
  if can_compile then
    program_checks(add)
    if sys.has_btf() then
      headers_check(add)
    end
  else
    add("tracepoint program", false, "skipped: fix the checks above first", "", true)
  end
  -- what the kernel's BPF can do, and what denet does without it
  for _, f in ipairs(require("denet.kernel").report()) do
    if f.name ~= "kprobes" and f.name ~= "fentry" and f.name ~= "btf" then
      add("feature " .. f.name, f.present, f.present and f.what
        or string.format("%s%s (%s+)", f.disabled and "disabled: " or "missing: ", f.what, f.since),
        "optional: denet uses a fallback (docs/platform.md)", false)
    end
  end
  local stats = sys.read_first_line("/proc/sys/kernel/bpf_stats_enabled")
  add("kernel.bpf_stats_enabled", stats == "1", stats == "1" and "on: per-program run time is counted"
    or "off", "optional, for BPF cost figures: sysctl -w kernel.bpf_stats_enabled=1", false)
  return out
end

function M.main()
  local bad = false
  for _, c in ipairs(M.checks()) do
    if c.ok then
      print(string.format("✓ %-26s %s", c.name, c.detail or ""))
    else
      local line = string.format("✗ %-26s %s%s", c.name, c.fatal and "(required) " or "", c.detail or "")
      if c.fix and c.fix ~= "" then
        line = line .. " — fix: " .. c.fix
      end
      print(line)
      bad = bad or c.fatal
    end
  end
  if bad then
    print("BPF cannot work here until the required checks above pass.")
    return 1
  end
  print("BPF works here.")
  return 0
end

return M
