-- denet.sys: what this machine offers BPF, and the checks that turn a
-- missing piece into one actionable line instead of a libbcc failure.
--
-- Shared by denet.bpf (checked before compiling and attaching) and by
-- `denet doctor` (which prints every check).
local core = require("denet.core")
local errors = require("denet.errors")

local M = {}

-- true for an existing file or directory (fopen of a directory succeeds)
local function exists(path)
  local f = io.open(path, "r")
  if f then
    f:close()
    return true
  end
  return false
end
M.exists = exists

local function read_first_line(path)
  local f = io.open(path, "r")
  if not f then
    return nil
  end
  local s = f:read("*l")
  f:close()
  return s
end
M.read_first_line = read_first_line

--- The text of an errno value ("No such file or directory").
M.strerror = core.strerror

function M.pid()
  return core.ids().pid
end

-- "0-3,5" -> {0,1,2,3,5}
M.parse_cpu_list = require("denet.util").cpu_list

--- CPUs online now (where perf buffers and sampling events go).
function M.online_cpus()
  return M.parse_cpu_list(read_first_line("/sys/devices/system/cpu/online") or "0")
end

local possible
--- Number of possible CPUs: the size of a per-CPU map value.
function M.possible_cpus()
  if not possible then
    local list = M.parse_cpu_list(read_first_line("/sys/devices/system/cpu/possible") or "0")
    possible = list[#list] + 1
  end
  return possible
end

--- Where tracefs is mounted, or nil.
function M.tracefs()
  for _, dir in ipairs({ "/sys/kernel/tracing", "/sys/kernel/debug/tracing" }) do
    if exists(dir .. "/events/header_page") or exists(dir .. "/available_events") then
      return dir
    end
  end
  return nil
end

function M.tracepoint_exists(cat, ev)
  local t = M.tracefs()
  return t ~= nil and exists(string.format("%s/events/%s/%s/id", t, cat, ev))
end

--- Privileges for BPF: root, or CAP_BPF with CAP_PERFMON.
--- Returns ok, description.
function M.privileges()
  local ids = core.ids()
  local caps = core.caps() or {}
  if ids.euid == 0 and (caps.sys_admin or (caps.bpf and caps.perfmon)) then
    return true, "root"
  end
  if caps.sys_admin then
    return true, "CAP_SYS_ADMIN"
  end
  if caps.bpf and caps.perfmon then
    return true, "CAP_BPF and CAP_PERFMON"
  end
  return false, ids.euid == 0 and "root without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN"
    or string.format("uid %d without CAP_BPF and CAP_PERFMON", ids.euid)
end

--- The kernel headers libbcc will compile against: dir, how it was found.
--- nil and the places tried when there are none.
function M.kernel_headers()
  local env = os.getenv("BCC_KERNEL_SOURCE")
  if env and env ~= "" then
    if exists(env .. "/include") or exists(env .. "/Makefile") then
      return env, "BCC_KERNEL_SOURCE"
    end
  end
  local rel = core.uname().release
  local build = "/lib/modules/" .. rel .. "/build"
  -- a split layout (Debian: -amd64 and -common) needs source/ as well;
  -- io.open succeeds on directories, so exists() checks them too
  if exists(build .. "/include") then
    if exists(build .. "/include/linux") or exists("/lib/modules/" .. rel .. "/source/include/linux") then
      return build, "/lib/modules/" .. rel .. "/build"
    end
  end
  if exists("/sys/kernel/kheaders.tar.xz") then
    return "/sys/kernel/kheaders.tar.xz", "the kernel's built-in kheaders"
  end
  return nil, build
end

--- Does the kernel offer kprobes (perf kprobe PMU or tracefs kprobe_events)?
function M.has_kprobes()
  if exists("/sys/bus/event_source/devices/kprobe/type") then
    return true
  end
  local t = M.tracefs()
  return t ~= nil and exists(t .. "/kprobe_events")
end

function M.has_btf()
  return exists("/sys/kernel/btf/vmlinux")
end

--- Raise a user error unless BPF programs can be compiled and loaded.
local checked
function M.require_bpf()
  if checked then
    return
  end
  local ok, who = M.privileges()
  if not ok then
    errors.raise(string.format("BPF needs privileges: running as %s; run denet as root (sudo denet ...) "
      .. "or grant CAP_BPF and CAP_PERFMON (setcap cap_bpf,cap_perfmon+ep $(which denet))", who))
  end
  local dir, tried = M.kernel_headers()
  if not dir then
    errors.raise(string.format("no kernel headers found for kernel %s (looked in %s, BCC_KERNEL_SOURCE and "
      .. "/sys/kernel/kheaders.tar.xz); run tools/setup.sh, which installs linux-headers-amd64 and links it "
      .. "there, or install the headers of your kernel", core.uname().release, tried))
  end
  checked = true
end

--- Raise a user error unless tracefs is mounted.
function M.require_tracefs()
  if not M.tracefs() then
    errors.raise("tracefs is not mounted, so tracepoints cannot be found; mount it with: "
      .. "mount -t tracefs tracefs /sys/kernel/tracing")
  end
end

return M
