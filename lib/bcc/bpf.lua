-- bcc.bpf: the BPF class of bcc's Lua binding, on denet's host.
--
--   local BPF = require("bcc").BPF
--   local b = BPF:new{ text = SRC, cflags = { ... }, debug = 0, usdt = u }
--   b:attach_uprobe{ name = "c", sym = "malloc", fn_name = "f", retprobe = true }
--   b:get_table("events"):open_perf_buffer(cb, "struct { u64 pid; }")
--   b:perf_buffer_poll_loop()
--
-- Programs are compiled, loaded and attached by denet (denet.bpf): its
-- checks, kernel-type handling and cleanup hold here too. Errors are
-- strings, as bcc raises them, prefixed with the script's file:line; a
-- Ctrl-C raises denet's interrupt error (tostring: "interrupted").
--
-- Beyond bcc's Lua binding: attach_tracepoint, attach_raw_tracepoint and
-- attach_perf_event (named as in bcc's Python), ksym/sym, and
-- TRACEPOINT_PROBE functions attached when the program is built.
local dbpf = require("denet.bpf")
local errors = require("denet.errors")
local syms = require("denet.syms")
local Table = require("bcc.table")
local TracerPipe = require("bcc.tracerpipe")
local Sym = require("bcc.sym")

local Bpf = class("BPF")

Bpf.static.open_kprobes = {}
Bpf.static.open_uprobes = {}
Bpf.static.perf_buffers = {}
Bpf.static.KPROBE_LIMIT = 1000
Bpf.static.tracer_pipe = nil
Bpf.static.DEFAULT_CFLAGS = {
  "-D__HAVE_BUILTIN_BSWAP16__",
  "-D__HAVE_BUILTIN_BSWAP32__",
  "-D__HAVE_BUILTIN_BSWAP64__",
}
Bpf.static.SCRIPT_ROOT = "./"

-- enum bpf_prog_type, by the names bcc's load_func takes
local PROG_TYPES = dbpf.PROG_TYPE_NAMES
Bpf.static.PROG_TYPES = PROG_TYPES

-- Raise e as bcc would: a string (prefixed with the user's file:line);
-- an interrupt stays the interrupt.
local function fail(e)
  if errors.is_interrupt(e) then
    error(e, 0)
  end
  local text = errors.text(e)
  local where = errors.where(2)
  if where and text:sub(1, #where) ~= where then
    text = where .. ": " .. text
  end
  error(text, 0)
end

-- Call f(...) and re-raise its failure as fail() does.
local function try(f, ...)
  local res = { pcall(f, ...) }
  if not res[1] then
    fail(res[2])
  end
  return unpack(res, 2, table.maxn(res))
end

function Bpf.static.check_probe_quota(n)
  local cur = table.count(Bpf.open_kprobes) + table.count(Bpf.open_uprobes)
  if cur + n > Bpf.KPROBE_LIMIT then
    fail("number of open probes would exceed quota")
  end
end

--- Detach every probe of every BPF object, close the perf buffers and
--- trace_pipe (the programs stay loaded until their objects go).
function Bpf.static.cleanup()
  for _, set in ipairs({ Bpf.open_kprobes, Bpf.open_uprobes }) do
    for key, p in pairs(set) do
      p.bpf._d:detach(p.handle)
      set[key] = nil
    end
  end
  for key, src in pairs(Bpf.perf_buffers) do
    src:close()
    Bpf.perf_buffers[key] = nil
  end
  if Bpf.tracer_pipe ~= nil then
    Bpf.tracer_pipe:close()
  end
end
Bpf.static.cleanup_probes = Bpf.static.cleanup

function Bpf.static.SymbolCache(pid)
  return Sym.create_cache(pid)
end

function Bpf.static.num_open_uprobes()
  return table.count(Bpf.open_uprobes)
end

function Bpf.static.num_open_kprobes()
  return table.count(Bpf.open_kprobes)
end

--- Where src_file= names are looked for: the folder of the script at path.
function Bpf.static.script_root(path)
  Bpf.static.SCRIPT_ROOT = path:match("^(.*/)") or "./"
  return Bpf
end

-- A relative src_file is the script's (beside it), else the current
-- folder's.
local function find_file(name)
  if name == nil then
    return nil
  end
  if name:sub(1, 1) ~= "/" and os.exists(Bpf.SCRIPT_ROOT .. name) then
    return Bpf.SCRIPT_ROOT .. name
  end
  if os.exists(name) then
    return name
  end
  fail(string.format("failed to find file %s (root=%s)", name, Bpf.SCRIPT_ROOT))
end

local NEW_OPTS = { "text", "src_file", "hdr_file", "cflags", "debug", "usdt" }

function Bpf:initialize(args)
  if type(args) ~= "table" then
    fail("BPF:new needs a table of options ({ text = ... } or { src_file = ... })")
  end
  try(errors.check_opts, "BPF:new", args, NEW_OPTS)
  self.funcs = {}
  self.tables = {}
  local cflags = table.join(Bpf.DEFAULT_CFLAGS, args.cflags)
  local debug = rawget(_G, "LIBBCC_LLVM_DEBUG") or args.debug or 0
  if type(debug) ~= "number" then
    fail("BPF:new: debug= must be a number (libbcc's debug flags)")
  end
  local text, name = args.text, nil
  if text ~= nil and args.src_file ~= nil then
    fail("BPF:new: give text= or src_file=, not both")
  end
  if text == nil then
    if args.src_file == nil then
      fail("failed to compile BPF module: give text= or src_file=")
    end
    local path = find_file(args.src_file)
    if path:match("%.b$") then
      fail("failed to compile BPF module: B language sources (" .. path .. ") are not supported; write C")
    end
    text = try(require("denet.bpf.source").try_read, path)
    if not text then
      fail("cannot read BPF source " .. path)
    end
    name = path
  end
  if args.usdt then
    text = args.usdt:_get_text() .. string.format('\n#line 1 "%s"\n', name or "bpf.c") .. text
  end
  log.info("\n%s\n", text)
  -- not from the cache: bcc's key/leaf printing needs libbcc's module
  self._d = try(dbpf.new, { text = text, name = name, cflags = cflags, debug = debug, autoattach = false,
    cache = false })
  self.module = self._d.m
  -- functions bcc's Lua could never attach (no such call): as bcc's
  -- Python does, TRACEPOINT_PROBE / RAW_TRACEPOINT_PROBE attach now
  for _, fn in ipairs(self._d.m:functions()) do
    local cat, ev = fn:match("^tracepoint__(.-)__(.+)$")
    if cat then
      self:attach_tracepoint{ tp = cat .. ":" .. ev, fn_name = fn }
    elseif fn:match("^raw_tracepoint__") then
      self:attach_raw_tracepoint{ tp = fn:sub(17), fn_name = fn }
    end
  end
  if args.usdt then
    args.usdt:_attach_uprobes(self)
  end
end

--- Load every function of the program as prog_type (default KPROBE).
function Bpf:load_funcs(prog_type)
  local out = {}
  for _, name in ipairs(self._d.m:functions()) do
    out[#out + 1] = self:load_func(name, prog_type or "BPF_PROG_TYPE_KPROBE")
  end
  return out
end

--- Load fn_name as prog_type ("BPF_PROG_TYPE_KPROBE" or its number):
--- { bpf = self, name = fn_name, fd = fd }, loaded once.
function Bpf:load_func(fn_name, prog_type)
  if self.funcs[fn_name] ~= nil then
    return self.funcs[fn_name]
  end
  local ptype = type(prog_type) == "number" and prog_type or PROG_TYPES[prog_type]
  if not ptype then
    fail(string.format("load_func: unknown program type %s (known: BPF_PROG_TYPE_KPROBE, "
      .. "BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_PERF_EVENT, ...)", tostring(prog_type)))
  end
  if not self._d.m:function_code(fn_name) then
    fail("unknown program: " .. tostring(fn_name))
  end
  local fd = try(self._d.load_func, self._d, fn_name, ptype)
  log.info("loaded %s (%d)", fn_name, fd)
  local fn = { bpf = self, name = fn_name, fd = fd }
  self.funcs[fn_name] = fn
  return fn
end

--- The compiled instructions of fn_name, as bytes.
function Bpf:dump_func(fn_name)
  local code, msg = self._d.m:function_code(fn_name)
  if not code then
    fail("unknown program: " .. tostring(fn_name) .. " (" .. msg .. ")")
  end
  return code
end

function Bpf:probe_store(t, id, handle)
  local set = t == "kprobe" and Bpf.open_kprobes or t == "uprobe" and Bpf.open_uprobes
  if not set then
    fail(string.format("unknown probe type '%s'", tostring(t)))
  end
  set[id] = { bpf = self, handle = handle }
  log.info("%s -> %s", id, tostring(handle))
end

function Bpf:probe_lookup(t, id)
  local set = t == "kprobe" and Bpf.open_kprobes or t == "uprobe" and Bpf.open_uprobes or {}
  return set[id] and set[id].handle
end

local UPROBE_OPTS = { "name", "sym", "addr", "pid", "fn_name", "retprobe", "sym_off" }

--- attach_uprobe{ name = binary or library ("c"), sym = "f" | addr = ELF
--- address, sym_off, pid, fn_name, retprobe = true for a return probe }
function Bpf:attach_uprobe(args)
  try(errors.check_opts, "attach_uprobe", args, UPROBE_OPTS)
  Bpf.check_probe_quota(1)
  local path, addr = try(Sym.check_path_symbol, args.name, args.sym, args.addr, args.pid, args.sym_off)
  local ptype = args.retprobe and "r" or "p"
  local ev_name = string.format("%s_%s_0x%x", ptype, path:gsub("[^%a%d]", "_"), addr)
  local d = { name = args.name, pid = args.pid, fn_name = args.fn_name, retprobe = args.retprobe and true or nil }
  if args.sym then
    d.sym, d.sym_off = args.sym, args.sym_off
  else
    d.addr = args.addr
  end
  local h = try(self._d.attach_uprobe, self._d, d)
  self:probe_store("uprobe", ev_name, h)
  return self
end

local KPROBE_OPTS = { "event", "fn_name", "retprobe" }

--- attach_kprobe{ event = "kernel_fn", fn_name, retprobe = true for a
--- return probe } (where the kernel has kprobes)
function Bpf:attach_kprobe(args)
  try(errors.check_opts, "attach_kprobe", args, KPROBE_OPTS)
  Bpf.check_probe_quota(1)
  local event = args.event or ""
  local ptype = args.retprobe and "r" or "p"
  local ev_name = string.format("%s_%s", ptype, (event:gsub("[%+%.]", "_")))
  local h = try(self._d.attach_kprobe, self._d, { event = event, fn_name = args.fn_name,
    retprobe = args.retprobe and true or nil })
  self:probe_store("kprobe", ev_name, h)
  return self
end

--- attach_tracepoint{ tp = "category:event", fn_name }
function Bpf:attach_tracepoint(args)
  try(self._d.attach_tracepoint, self._d, args)
  return self
end

--- attach_raw_tracepoint{ tp = "sched_switch", fn_name }
function Bpf:attach_raw_tracepoint(args)
  try(self._d.attach_raw_tracepoint, self._d, args)
  return self
end

--- attach_perf_event{ ev_type, ev_config, fn_name, sample_freq |
--- sample_period, pid, cpu } (see denet.bpf)
function Bpf:attach_perf_event(args)
  try(self._d.attach_perf_event, self._d, args)
  return self
end

--- The trace_pipe reader (one for every BPF object).
function Bpf:pipe()
  if Bpf.tracer_pipe == nil then
    Bpf.static.tracer_pipe = TracerPipe:new()
  end
  return Bpf.tracer_pipe
end

--- The table `name`, or nil when the program has none. key_type and
--- leaf_type (C text) override the types libbcc describes.
function Bpf:get_table(name, key_type, leaf_type)
  if self.tables[name] == nil then
    self.tables[name] = Table(self, name, key_type, leaf_type)
  end
  return self.tables[name]
end

function Bpf:perf_buffer_store(id, source)
  Bpf.perf_buffers[id] = source
end

--- Wait up to timeout ms (default: until something happens) and run the
--- callbacks of the perf buffers (and denet's other loop sources) that
--- are ready. Ctrl-C raises the interrupt error.
function Bpf:perf_buffer_poll(timeout)
  return self._d:perf_buffer_poll(timeout or -1)
end
Bpf.kprobe_poll = Bpf.perf_buffer_poll

--- Poll until an error or Ctrl-C; returns pcall's results (false and
--- the error), so the script goes on to print what it gathered.
function Bpf:perf_buffer_poll_loop()
  return pcall(function()
    while true do
      self._d:perf_buffer_poll(-1)
    end
  end)
end
Bpf.kprobe_poll_loop = Bpf.perf_buffer_poll_loop

--- Kernel symbol of addr ("name", "name+0xoff" with show_offset);
--- b:ksym(addr) or BPF.ksym(addr).
function Bpf.ksym(a, b, c)
  if type(a) == "table" then
    return syms.ksym(b, c)
  end
  return syms.ksym(a, b)
end

--- User symbol of addr in process pid: b:sym(addr, pid [, show_module,
--- show_offset]) or BPF.sym(addr, pid, ...).
function Bpf.sym(...)
  local args = { ... }
  if type(args[1]) == "table" then
    table.remove(args, 1)
  end
  return syms.usym(args[2], args[1], { module = args[3], offset = args[4] })
end

return Bpf
