-- denet.syms: addresses to names, with caches shared by every feature.
--
-- Kernel symbols come from one libbcc symbol cache over /proc/kallsyms.
-- User symbols come from a capture of a process's executable mappings
-- (host/dn_sym.c): capture(pid) while the process lives, and its stacks
-- still resolve after it exits. ELF symbol tables are loaded once per file
-- and shared between processes.
local core = require("denet.core")

local M = {}

local kcache
local procs = {} -- pid -> captured mappings

local function kernel()
  if not kcache then
    kcache = assert(core.ksyms())
  end
  return kcache
end

--- Read the kernel's symbols in the background, if not yet (a tracer
--- starts it while it waits, so that its report does not; the loop goes
--- on meanwhile). The first kernel frame named waits for the read.
function M.load_kernel()
  if not kcache then
    core.ksyms_start()
  end
end

--- The kernel's symbol table (host/dn_sym.c): :resolve(addr) -> name,
--- offset | nil.
function M.kernel_table()
  return kernel()
end

--- A capture of process pid's mappings now, not kept (host/dn_sym.c):
--- :resolve(addr) -> name, offset, module; nil and why when it is gone.
function M.maps(pid)
  return core.usyms(pid)
end

--- A binary, library name ("c") or command and a symbol (or an ELF
--- address) -> the file's path and the file offset to probe; nil and
--- why.
M.resolve_symname = core.resolve_symname

local function hex(n)
  return string.format("0x%x", tonumber(n))
end

--- Kernel symbol of addr: "name" or "name+0xoff"; "[unknown]" when none.
function M.ksym(addr, show_offset)
  local name, off = kernel():resolve(addr)
  if not name then
    return "[unknown]"
  end
  if show_offset then
    return name .. "+" .. hex(off)
  end
  return name
end

--- Capture pid's mappings now (replacing an older capture: call it again
--- after exec or dlopen). Returns true, or nil and why.
-- Frames of the tracing machinery itself: when more than one probe sits on
-- a tracepoint (another tracer, an enabled ftrace event) the kernel calls
-- them through __traceiter_*, which then appears as the leaf of every
-- stack a BPF program takes there.
local TRACING = { "^__traceiter_", "^__bpf_trace_", "^bpf_trace_run%d", "^perf_trace_", "^trace_event_raw_event_",
  "^trace_call_bpf$", "^bpf_prog_[%x]+_", "^__probestub_" }

--- Is a kernel symbol name one of the tracing machinery's?
function M.is_tracing_frame(name)
  for _, p in ipairs(TRACING) do
    if name:find(p) then
      return true
    end
  end
  return false
end

--- Kernel frame names of addrs (leaf first), with the tracing
--- machinery's frames at the leaf end left out.
function M.kernel_frames(addrs)
  local out, skipping = {}, true
  for _, a in ipairs(addrs) do
    local name = M.ksym(a)
    if not (skipping and M.is_tracing_frame(name)) then
      skipping = false
      out[#out + 1] = name
    end
  end
  return out
end

-- Images of a process: when a stack engine numbers them (M.image_of), a
-- capture is labelled with the image it is of, and one of an image the
-- process has left (by exec) is kept, as "pid#image", for the stacks
-- walked while the process ran it.
local labels = {} -- pid -> the image of procs[pid]
local retired, retired_keys, RETIRED_MAX = {}, {}, 4096

--- function(pid) -> the number of the image process pid runs now (nil:
--- unknown); set by a stack engine that counts execs.
M.image_of = nil

local function retire(pid)
  local label = labels[pid]
  if label == nil or not procs[pid] then
    return
  end
  local key = pid .. "#" .. label
  if not retired[key] then
    retired_keys[#retired_keys + 1] = key
    if #retired_keys > RETIRED_MAX then
      retired[table.remove(retired_keys, 1)] = nil
    end
  end
  retired[key] = procs[pid]
end

function M.capture(pid)
  local image_of = M.image_of
  local image = image_of and image_of(pid)
  local m, err = core.usyms(pid)
  if not m then
    return nil, err
  end
  -- (an exec while it was read: of which image is not known)
  if image_of and image_of(pid) ~= image then
    image = nil
  end
  if labels[pid] ~= image then
    retire(pid)
  end
  procs[pid], labels[pid] = m, image
  return true
end

--- Process pid was forked by ppid: it has ppid's capture (the same
--- mappings, at fork) until it is captured itself; read now when ppid has
--- none.
function M.inherit(pid, ppid)
  if procs[ppid] then
    -- (a process's first image: numbered 0)
    procs[pid], labels[pid] = procs[ppid], M.image_of and 0 or nil
  else
    M.capture(pid)
  end
end

--- Forget a capture (the pid may be reused, or it exec'd: a capture of a
--- numbered image is kept for that image's stacks).
function M.forget(pid)
  retire(pid)
  procs[pid], labels[pid] = nil, nil
end

--- What to resolve a stack of process pid walked in its image number
--- image with: pid itself (its capture now), or the capture kept of that
--- image.
function M.at(pid, image)
  if image == nil or labels[pid] == image then
    return pid
  end
  local key = pid .. "#" .. image
  return retired[key] and key or pid
end

local function proc(pid)
  if type(pid) == "string" then
    return retired[pid]
  end
  local m = procs[pid]
  if not m then
    m = core.usyms(pid)
    procs[pid] = m or false
  end
  return m or nil
end

--- How to find the caller of the function running at addr in pid (a
--- return address when is_return), from its file's call frame
--- information: "unwind", cfa, ra | "stop" | nil (see usyms:frame_rule in
--- host/dn_sym.c). A mapping newer than the capture is read again once.
function M.frame_rule(pid, addr, is_return)
  local m = proc(pid)
  if not m then
    return nil
  end
  local kind, cfa, ra = m:frame_rule(addr, is_return)
  if kind == nil and type(pid) == "number" and m:resolve(addr) == nil and M.capture(pid) then
    kind, cfa, ra = procs[pid]:frame_rule(addr, is_return)
  end
  return kind, cfa, ra
end

--- The source lines and inlined functions at a user address of pid (a
--- return address when is_return), innermost first: { {name, file,
--- line, inlined}, ... } from the file's DWARF, or nil.
function M.srcinfo(pid, addr, is_return)
  local m = proc(pid)
  return m and m:srcinfo(addr, is_return) or nil
end

--- Resolve a user address of pid: name|nil, offset, module. offset is
--- from the symbol, or the module's ELF address when no symbol covers it.
-- C++ names demangled once each
local demangled = {}
local function demangle(name)
  if not name or name:sub(1, 2) ~= "_Z" then
    return name
  end
  local d = demangled[name]
  if not d then
    d = core.demangle(name)
    demangled[name] = d
  end
  return d
end
M.demangle = demangle

function M.resolve(pid, addr)
  local m = proc(pid)
  if not m then
    return nil
  end
  local name, off, module = m:resolve(addr)
  if name == nil then
    return nil
  end
  return demangle(name or nil), off, module
end

local basename = require("denet.util").basename

--- User symbol of addr in pid as text: "name" ("name+0xoff" with
--- opts.offset, "name [module]" with opts.module), "module+0xoff" when no
--- symbol covers it, "[unknown]" when no mapping does.
function M.usym(pid, addr, opts)
  opts = opts or {}
  local name, off, module = M.resolve(pid, addr)
  if name then
    local s = name
    if opts.offset then
      s = s .. "+" .. hex(off)
    end
    if opts.module then
      s = s .. " [" .. basename(module) .. "]"
    end
    return s
  end
  if module then
    return basename(module) .. "+" .. hex(off)
  end
  return "[unknown]"
end

--- Frame names of a stack (a list of addresses, leaf first): kernel
--- addresses when pid is nil or negative, else user addresses of pid.
function M.frames(addrs, pid, opts)
  local out = {}
  for i, a in ipairs(addrs) do
    if pid and pid >= 0 then
      out[i] = M.usym(pid, a, opts)
    else
      out[i] = M.ksym(a, opts and opts.offset)
    end
  end
  return out
end

return M
