-- denet.bpf: BPF programs from Lua, with bcc's names: the class (compile
-- or load from the cache, attach, close). Its parts: denet.bpf.source
-- (the program text made ready for libbcc), denet.bpf.table (tables),
-- denet.bpf.buffer (perf and ring buffers).
--
--   local BPF = require("denet.bpf")
--   local b = BPF.new{ text = SRC, cflags = { "-DTARGET=" .. pid } }
--   -- TRACEPOINT_PROBE / RAW_TRACEPOINT_PROBE functions are attached now
--   for k, v in b:get_table("counts"):items() do print(k, tonumber(v)) end
--   b:close()   -- or let denet exit: everything is detached either way
--
-- Compiling, loading and attaching happen in C (host/dn_bcc.c) against
-- libbcc's headers; this file names things, checks the machine before
-- it fails in obscure ways, and turns keys and leaves into typed cdata.
local core = require("denet.core")
local cache = require("denet.cache")
local errors = require("denet.errors")
local source = require("denet.bpf.source")
local syms = require("denet.syms")
local sys = require("denet.sys")
local tables = require("denet.bpf.table")

local BPF = {}
BPF.__index = BPF

-- DENET_DISABLE=batch: read maps key by key, as kernels before 5.6 must
-- (the host falls back by itself where the kernel refuses batches)
if require("denet.kernel").disabled().batch then
  core.map_batch(false)
end

-- enum bpf_prog_type
BPF.SOCKET_FILTER, BPF.KPROBE, BPF.TRACEPOINT, BPF.PERF_EVENT = 1, 2, 5, 7
BPF.RAW_TRACEPOINT, BPF.TRACING = 17, 26
-- enum bpf_map_type
BPF.MAP = tables.MAP
-- perf_event_attr type/config for attach_perf_event
BPF.PERF_TYPE_HARDWARE, BPF.PERF_TYPE_SOFTWARE = 0, 1
BPF.PERF_COUNT_SW_CPU_CLOCK, BPF.PERF_COUNT_SW_TASK_CLOCK = 0, 1
BPF.PERF_COUNT_HW_CPU_CYCLES, BPF.PERF_COUNT_HW_INSTRUCTIONS = 0, 1

---------------------------------------------------------------------------
-- construction

-- Where did the Lua code that called BPF.new live? (for messages)
local function caller_place(level)
  local info = debug.getinfo(level, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return string.format("%s:%d", info.short_src, info.currentline)
  end
  return "BPF.new"
end

-- A relative src_file= is looked for beside the script that calls
-- BPF.new (as #include "x" is beside its file), then from the current
-- folder.
local function find_src_file(path, level)
  if path:sub(1, 1) == "/" then
    return path
  end
  local info = debug.getinfo(level + 1, "S")
  local src = info and info.source or ""
  if src:sub(1, 1) == "@" then
    local cand = source.dirname(src:sub(2)) .. "/" .. path
    if core.stat(cand) then
      return cand
    end
  end
  return path
end

local NEW_OPTS = { "text", "src_file", "cflags", "name", "autoattach", "warnings", "debug", "usdt", "cache",
  "before_attach" }

-- The options of BPF.new, however it was called (BPF.new{...},
-- BPF:new{...}, BPF.new(text)), checked.
local function new_opts(opts, more)
  if opts == BPF then
    opts = more
  end
  if type(opts) == "string" then
    opts = { text = opts }
  end
  if type(opts) ~= "table" then
    error("BPF.new: give a table of options (text= or src_file=, ...)", 3)
  end
  errors.check_opts("BPF.new", opts, NEW_OPTS)
  if (opts.text == nil) == (opts.src_file == nil) then
    errors.bad_call("BPF.new", "give exactly one of text= or src_file=")
  end
  return opts
end

-- The USDT contexts of opts.usdt (one or a list), checked; nil for none.
local function usdt_list(usdts)
  if usdts and getmetatable(usdts) == BPF.USDT then
    usdts = { usdts }
  end
  for i, u in ipairs(usdts or {}) do
    if getmetatable(u) ~= BPF.USDT then
      error(string.format("BPF.new: usdt[%d] is not a USDT context (BPF.usdt{...})", i), 3)
    end
  end
  return usdts
end

-- The program's text and name, its includes in place (and the USDT
-- probes' argument readers first), and the clang flags.
local function program_text(opts, usdts)
  local text, name, basedir = opts.text, opts.name or "bpf.c", nil
  if opts.src_file then
    local path = find_src_file(opts.src_file, 3)
    text = source.read_file(path)
    name = opts.name or opts.src_file
    basedir = source.dirname(path)
  end
  if usdts then
    local list = {}
    for i, u in ipairs(usdts) do
      list[i] = u.ctx
    end
    local args, msg = BPF.usdt_args(list)
    if not args then
      errors.raise(msg)
    end
    -- the readers go first; #line keeps the user's line numbers
    text = args .. string.format('\n#line 1 "%s"\n', name) .. text
  end
  local cflags = { "-I" .. core.root .. "/bpf-src" }
  for _, f in ipairs(opts.cflags or {}) do
    cflags[#cflags + 1] = f
  end
  return source.inline_includes(text, name, basedir, source.quote_dirs(cflags)), name, cflags
end

-- The program compiled before from the same inputs, loaded from the
-- cache (entry cpath under key), or nil. What autoattach will load is
-- loaded now: a kept program the kernel refuses is compiled again (attach
-- errors are the caller's, as usual).
local function from_cache(cpath, key, name, autoattach)
  local m, why, reason = core.bpf_cache_load(cpath, key)
  if not m and reason ~= "absent" and reason ~= "other" then
    cache.note(name, why)
  end
  if not m or autoattach == false then
    return m
  end
  for _, fn in ipairs(m:functions()) do
    local ptype = source.auto_type(fn)
    local fd, log = true, nil
    if ptype then
      fd, log = m:load(fn, ptype)
    end
    if not fd then
      m:close()
      os.remove(cpath) -- not to be tried again, whatever the compile gives
      cache.note(name, string.format("the kernel refused %s: %s", fn, tostring(log):match("[^\n]*")))
      return nil
    end
  end
  return m
end

-- Compile text through libbcc: the module, or a script error with clang's
-- diagnostics (file:line, named from `place`).
local function compile(text, name, cflags, opts, place)
  -- kernel structs as the running kernel lays them out (or one line)
  local ctext, cfl = require("denet.ktypes").apply(text, cflags, name)
  ctext = source.fix_lines(source.count_ringbuf_losses(ctext), name)
  local m, diag = core.bpf_compile(ctext, false, cfl, opts.debug)
  if not m then
    local n = source.count_errors(diag)
    errors.script(string.format("%s: failed to compile BPF module %s (%d error%s):\n%s", place, name, n,
      n == 1 and "" or "s", source.tidy_diagnostics(diag, name)))
  end
  if opts.warnings and diag:find("warning:") then
    io.stderr:write(source.tidy_diagnostics(diag, name), "\n")
  end
  return m
end

--- Compile BPF C through libbcc.
--- opts.text: the C source, or opts.src_file: a path to it (relative:
--- beside the calling script, else from the current folder);
--- opts.cflags: extra clang flags ({"-DTARGET=123"});
--- opts.name: name used in diagnostics (default: the file, or "bpf.c");
--- opts.autoattach: false to skip attaching TRACEPOINT_PROBE etc.;
--- opts.warnings: true to print clang's warnings;
--- opts.debug: libbcc's debug flags (bcc_common.h; 0x4 prints the
--- rewritten source);
--- opts.usdt: a USDT context (BPF.usdt) or a list of them: their enabled
--- probes are attached once the program is loaded;
--- opts.before_attach(bpf): called once the maps exist, before any probe
--- is attached (to fill tables the probes read);
--- opts.cache: false to compile even when the cache holds the program
--- (denet.cache: the same inputs load what was compiled before, without
--- clang).
--- Raises with clang's diagnostics (file:line) when the C does not compile.
--- BPF.new{...} and BPF:new{...} are the same call.
function BPF.new(opts, more)
  opts = new_opts(opts, more)
  local place = errors.where(2) or caller_place(3)
  sys.require_bpf()
  local usdts = usdt_list(opts.usdt)
  local text, name, cflags = program_text(opts, usdts)
  local t0 = core.monotonic()
  -- A program compiled before from the same text and flags loads from
  -- the cache. The key is taken before the rewrites compile() makes: they
  -- depend only on the text and on the kernel and headers, which the key
  -- covers.
  local key = opts.cache ~= false and cache.program_key(text, cflags, opts.debug)
  local cpath = key and cache.program_path(key)
  local m = cpath and from_cache(cpath, key, name, opts.autoattach)
  local fresh = not m
  m = m or compile(text, name, cflags, opts, place)
  local self = setmetatable({
    m = m,
    name = name,
    place = place,
    from_cache = not fresh,
    -- the compile, or the load from the cache
    compile_time = core.monotonic() - t0,
    tables = {},
    buffers = {},
    probes = {}, -- description -> handles
    ringbuf_index = source.ringbuf_names(text),
  }, BPF)
  if opts.before_attach then
    opts.before_attach(self)
  end
  if opts.autoattach ~= false then
    self:_autoattach()
  end
  -- kept once it loaded and attached; best effort: a read-only cache only
  -- costs the next run a compile
  if fresh and cpath and m:cache_save(cpath, key, name) then
    cache.prune()
  end
  for _, u in ipairs(usdts or {}) do
    u:_attach(self)
  end
  return self
end

-- bcc's naming: functions named by their probe attach by themselves.
function BPF:_autoattach()
  for _, fn in ipairs(self.m:functions()) do
    local cat, ev = fn:match("^tracepoint__(.-)__(.+)$")
    if cat then
      self:attach_tracepoint{ tp = cat .. ":" .. ev, fn_name = fn }
    else
      local raw = fn:match("^raw_tracepoint__(.+)$")
      if raw then
        self:attach_raw_tracepoint{ tp = raw, fn_name = fn }
      elseif fn:match("^kprobe__") then
        self:attach_kprobe{ event = fn:sub(9), fn_name = fn }
      elseif fn:match("^kretprobe__") then
        self:attach_kretprobe{ event = fn:sub(12), fn_name = fn }
      elseif fn:match("^kfunc__") or fn:match("^kretfunc__") then
        self:attach_kfunc{ fn_name = fn }
      end
    end
  end
end

-- bcc's names of program types (enum bpf_prog_type)
local PROG_TYPE_NAMES = {
  BPF_PROG_TYPE_SOCKET_FILTER = 1, BPF_PROG_TYPE_KPROBE = 2, BPF_PROG_TYPE_SCHED_CLS = 3,
  BPF_PROG_TYPE_SCHED_ACT = 4, BPF_PROG_TYPE_TRACEPOINT = 5, BPF_PROG_TYPE_XDP = 6,
  BPF_PROG_TYPE_PERF_EVENT = 7, BPF_PROG_TYPE_CGROUP_SKB = 8, BPF_PROG_TYPE_CGROUP_SOCK = 9,
  BPF_PROG_TYPE_RAW_TRACEPOINT = 17, BPF_PROG_TYPE_TRACING = 26,
}
BPF.PROG_TYPE_NAMES = PROG_TYPE_NAMES

--- Load a function as a program of the given type (BPF.KPROBE, ... or
--- bcc's "BPF_PROG_TYPE_KPROBE"); returns its fd. Raises with the
--- verifier log's tail when the kernel refuses it.
function BPF:load_func(fn_name, prog_type)
  if type(prog_type) == "string" then
    local n = PROG_TYPE_NAMES[prog_type]
    if not n then
      errors.bad_call("load_func", string.format("unknown program type '%s'", prog_type))
    end
    prog_type = n
  end
  local fd, log = self.m:load(fn_name, prog_type)
  if not fd then
    local lines = {}
    for line in (log or ""):gmatch("[^\n]+") do
      lines[#lines + 1] = line
    end
    local first = math.max(1, #lines - 30)
    local tail = table.concat(lines, "\n", first)
    errors.script(string.format("%s: the kernel refused BPF function %s%s:\n%s", self.place, fn_name,
      first > 1 and " (last lines of the verifier log)" or "", tail))
  end
  return fd
end

local function add_probe(self, desc, h)
  local list = self.probes[desc] or {}
  list[#list + 1] = h
  self.probes[desc] = list
  return h
end

-- f{ key = v, ... } or f(v1, v2) in the order of `positional`; unknown
-- keys refused (errors.check_opts), the caller's caller blamed.
local function options(fname, a, known, positional, ...)
  if type(a) ~= "table" then
    local t, vals = {}, { a, ... }
    for i, k in ipairs(positional) do
      t[k] = vals[i]
    end
    a = t
  end
  errors.check_opts(fname, a, known)
  return a
end

local function need(fname, a, key, what)
  if a[key] == nil then
    errors.bad_call(fname, string.format("%s= is missing (%s)", key, what))
  end
end

local TP_OPTS = { "tp", "fn_name" }

--- attach_tracepoint{ tp = "category:event", fn_name = "fn" }
--- (also attach_tracepoint("category:event", "fn")).
function BPF:attach_tracepoint(a, ...)
  a = options("attach_tracepoint", a, TP_OPTS, TP_OPTS, ...)
  need("attach_tracepoint", a, "fn_name", "the BPF function to run")
  local cat, ev = tostring(a.tp):match("^([^:]+):(.+)$")
  if not cat then
    error("attach_tracepoint: tp must be 'category:event'", 2)
  end
  sys.require_tracefs()
  if not sys.tracepoint_exists(cat, ev) then
    errors.raise(string.format("no tracepoint %s:%s on this kernel (see %s/events/)", cat, ev, sys.tracefs()))
  end
  local fd = self:load_func(a.fn_name, BPF.TRACEPOINT)
  local h, msg = self.m:attach_tracepoint(fd, cat, ev)
  if not h then
    errors.raise(msg)
  end
  return add_probe(self, "tracepoint:" .. a.tp, h)
end

--- attach_raw_tracepoint{ tp = "sched_switch", fn_name = "fn" }
function BPF:attach_raw_tracepoint(a, ...)
  a = options("attach_raw_tracepoint", a, TP_OPTS, TP_OPTS, ...)
  need("attach_raw_tracepoint", a, "tp", "the raw tracepoint's name")
  need("attach_raw_tracepoint", a, "fn_name", "the BPF function to run")
  local fd = self:load_func(a.fn_name, BPF.RAW_TRACEPOINT)
  local h, msg = self.m:attach_raw_tracepoint(fd, a.tp)
  if not h then
    errors.raise(msg)
  end
  return add_probe(self, "raw_tracepoint:" .. a.tp, h)
end

local function sanitize(s)
  return (tostring(s):gsub("[^%w]", "_"))
end

local UPROBE_OPTS = { "name", "sym", "addr", "fn_name", "pid", "sym_off", "retprobe" }

local function attach_uprobe(self, fname, a, is_ret)
  a = options(fname, a, UPROBE_OPTS, {})
  if not a.name or not a.fn_name or (a.sym == nil and a.addr == nil) then
    errors.bad_call(fname, "needs name= (binary or library), sym= or addr=, and fn_name=")
  end
  is_ret = is_ret or a.retprobe == true
  local pid = a.pid or -1
  -- a path, a library name ("c") or a command on PATH; addr is an ELF
  -- virtual address, as nm and objdump print it
  local path, off = core.resolve_symname(a.name, a.sym, pid, a.sym == nil and a.addr or nil)
  if not path then
    errors.raise(off)
  end
  off = off + (a.sym_off or 0)
  local fd = self:load_func(a.fn_name, BPF.KPROBE)
  local ev = string.format("dn_%s_%s_0x%x_%d", is_ret and "r" or "p", sanitize(path):sub(-40), off, pid)
  local h, msg = self.m:attach_uprobe(fd, is_ret, ev, path, off, pid)
  if not h then
    errors.raise(msg)
  end
  return add_probe(self, (is_ret and "uretprobe:" or "uprobe:") .. path .. ":" .. tostring(a.sym or a.addr), h)
end

--- attach_uprobe{ name = binary, library ("c") or command, sym = "func" |
--- addr = ELF address (as nm prints it), sym_off = bytes past sym,
--- fn_name = "fn", pid = only this process (default all), retprobe = true
--- for a return probe }
function BPF:attach_uprobe(a)
  return attach_uprobe(self, "attach_uprobe", a, false)
end

--- attach_uretprobe{ same as attach_uprobe }: runs when the function returns.
function BPF:attach_uretprobe(a)
  return attach_uprobe(self, "attach_uretprobe", a, true)
end

local KPROBE_OPTS = { "event", "fn_name", "retprobe" }

local function attach_kprobe(self, fname, a, is_ret, ...)
  a = options(fname, a, KPROBE_OPTS, { "event", "fn_name" }, ...)
  need(fname, a, "event", "the kernel function")
  need(fname, a, "fn_name", "the BPF function to run")
  is_ret = is_ret or a.retprobe == true
  if not sys.has_kprobes() then
    errors.raise(string.format("cannot attach %s to %s: this kernel has no kprobes (no kprobe PMU and no "
      .. "kprobe_events in tracefs); use a tracepoint or raw tracepoint instead (see denet doctor)",
      is_ret and "kretprobe" or "kprobe", a.event))
  end
  local fd = self:load_func(a.fn_name, BPF.KPROBE)
  local ev = string.format("dn_%s_%s_%d", is_ret and "r" or "p", sanitize(a.event), sys.pid())
  local h, msg = self.m:attach_kprobe(fd, is_ret, ev, a.event)
  if not h then
    errors.raise(msg)
  end
  return add_probe(self, (is_ret and "kretprobe:" or "kprobe:") .. a.event, h)
end

--- attach_kprobe{ event = "kernel_function", fn_name = "fn", retprobe =
--- true for a return probe }: only where the kernel has kprobes;
--- elsewhere a clear error.
function BPF:attach_kprobe(a, ...)
  return attach_kprobe(self, "attach_kprobe", a, false, ...)
end

function BPF:attach_kretprobe(a, ...)
  return attach_kprobe(self, "attach_kretprobe", a, true, ...)
end

local KFUNC_OPTS = { "fn_name" }

--- attach_kfunc{ fn_name = "kfunc__do_nanosleep" }: an fentry/fexit
--- program (KFUNC_PROBE / KRETFUNC_PROBE) where the kernel supports them;
--- elsewhere a clear error.
function BPF:attach_kfunc(a)
  a = options("attach_kfunc", a, KFUNC_OPTS, KFUNC_OPTS)
  need("attach_kfunc", a, "fn_name", "the KFUNC_PROBE function")
  local fd, log = self.m:load(a.fn_name, BPF.TRACING)
  local h, msg
  if fd then
    h, msg = self.m:attach_kfunc(fd)
  end
  if not h then
    errors.raise(string.format("cannot attach fentry/fexit program %s: this kernel does not support fentry "
      .. "(%s); use a tracepoint or raw tracepoint instead (see denet doctor)", a.fn_name,
      (msg or log or ""):match("[^\n]+") or "load failed"))
  end
  return add_probe(self, "kfunc:" .. a.fn_name, h)
end

local PERF_OPTS = { "ev_type", "ev_config", "fn_name", "sample_freq", "sample_period", "pid", "cpu" }

--- attach_perf_event{ ev_type = BPF.PERF_TYPE_SOFTWARE, ev_config =
--- BPF.PERF_COUNT_SW_CPU_CLOCK, fn_name = "fn", sample_freq = 99 |
--- sample_period = N, pid = -1, cpu = -1 (all online CPUs) }.
--- Returns the list of handles (one per CPU).
function BPF:attach_perf_event(a)
  a = options("attach_perf_event", a, PERF_OPTS, {})
  need("attach_perf_event", a, "fn_name", "the BPF function to run")
  local fd = self:load_func(a.fn_name, BPF.PERF_EVENT)
  local ev_type = a.ev_type or BPF.PERF_TYPE_SOFTWARE
  local ev_config = a.ev_config or BPF.PERF_COUNT_SW_CPU_CLOCK
  local period, freq = a.sample_period or 0, a.sample_freq or 0
  if period == 0 and freq == 0 then
    error("attach_perf_event: give sample_freq= or sample_period=", 2)
  end
  local cpus = { a.cpu or -1 }
  local pid = a.pid or -1
  if (a.cpu or -1) < 0 and pid < 0 then
    cpus = sys.online_cpus()
  end
  local hs = {}
  for _, cpu in ipairs(cpus) do
    local h, msg = self.m:attach_perf_event(fd, ev_type, ev_config, period, freq, pid, cpu)
    if not h then
      errors.raise(msg)
    end
    hs[#hs + 1] = add_probe(self, "perf_event:" .. a.fn_name, h)
  end
  return hs
end

--- Detach what an attach_* call returned (a handle or a list of them).
function BPF:detach(h)
  if type(h) == "table" then
    for _, x in ipairs(h) do
      self.m:detach(x)
    end
  else
    self.m:detach(h)
  end
end

--- Detach every probe (perf events closed in parallel); the programs
--- and tables stay. On return no program runs any more: the tables hold
--- still for a final read.
function BPF:detach_all()
  self.m:detach_all()
end

--- How many probes are attached now.
function BPF:num_attached()
  return self.m:attachments()
end

--- Detach everything, free the maps and buffers. Idempotent; also done at
--- exit and by the garbage collector.
function BPF:close()
  for _, b in pairs(self.buffers) do
    b:close()
  end
  self.buffers = {}
  self.m:close()
end
BPF.cleanup = BPF.close

---------------------------------------------------------------------------
-- tables and events

--- The table named `name` (as declared with BPF_HASH, BPF_ARRAY, ...):
--- a denet.bpf.table object, made once per program.
function BPF:get_table(name)
  local t = self.tables[name]
  if t then
    return t
  end
  local info = self.m:table_info(name)
  if not info then
    error(string.format("no BPF table named '%s' (tables: %s)", name, table.concat(self.m:tables(), ", ")), 2)
  end
  t = tables.new(self, name, info)
  self.tables[name] = t
  return t
end

--- Records dropped by ringbuf_output/ringbuf_reserve failures in the
--- program, counted per ring buffer by denet's rewrite of those calls.
function BPF:ringbuf_lost(name)
  local t = self.m:table_info("__denet_rb_lost")
  if not t then
    return 0
  end
  local lost = self:get_table("__denet_rb_lost")
  local idx = self.ringbuf_index and self.ringbuf_index[name]
  if not idx then
    return 0
  end
  return tonumber(lost:sum(idx)) or 0
end

--- Run the loop for up to timeout_ms (bcc's name; nil: until something
--- happens): buffer callbacks fire. Returns how many callbacks ran.
--- A SIGINT/SIGTERM meanwhile raises the interrupt error (Ctrl-C ends a
--- `while true do b:perf_buffer_poll(1000) end` loop), unless signals are
--- deferred (denet.with_signals_deferred), when it is returned second.
function BPF:perf_buffer_poll(timeout_ms)
  local n, sig = require("denet")._poll(timeout_ms and timeout_ms >= 0 and timeout_ms / 1000 or -1,
    "perf_buffer_poll")
  if sig ~= 0 and not core.signals_deferred() then
    core.raise_interrupt(sig)
  end
  return n, sig
end
BPF.ring_buffer_poll = BPF.perf_buffer_poll

--- Run the callbacks of whatever is ready, without waiting.
function BPF:ring_buffer_consume()
  return self:perf_buffer_poll(0)
end

---------------------------------------------------------------------------
-- trace_pipe (bpf_trace_printk's output)

--- The next line of the kernel's trace_pipe (what bpf_trace_printk
--- writes), waiting for it; nil after timeout seconds, if given. Buffer
--- callbacks keep firing meanwhile, and a SIGINT/SIGTERM raises the
--- interrupt error.
function BPF:trace_readline(timeout)
  return require("denet.tracepipe").shared():readline(timeout)
end

--- The next trace_pipe line split as bcc does: task, pid, cpu, flags,
--- timestamp (seconds), message. Waits as trace_readline does.
function BPF:trace_fields(timeout)
  return require("denet.tracepipe").shared():fields(timeout)
end

--- Print trace_pipe lines (fmt: a function of the fields returning the
--- text, default the raw line) until interrupted.
function BPF:trace_print(fmt)
  local tp = require("denet.tracepipe").shared()
  while true do
    if fmt then
      print(fmt(tp:fields()))
    else
      print(tp:readline())
    end
  end
end

---------------------------------------------------------------------------
-- USDT probes

local USDT = {}
USDT.__index = USDT
BPF.USDT = USDT

local USDT_OPTS = { "pid", "path" }

--- A USDT context: the probes (sys/sdt.h markers) of process pid (every
--- object it maps, or only path), or of the binary at path.
---   local u = BPF.usdt{ pid = 1234 }   -- or { path = "/usr/bin/prog" }
---   u:enable_probe{ probe = "provider:name", fn_name = "on_probe" }
---   local b = BPF.new{ text = SRC, usdt = u }  -- attached once loaded
--- In the program, bpf_usdt_readarg(n, ctx, &v) reads argument n (1-based).
--- A probe with a semaphore is only enabled in a process (give pid).
function BPF.usdt(opts)
  errors.check_opts("BPF.usdt", opts, USDT_OPTS)
  if type(opts) ~= "table" or (not opts.pid and not opts.path) then
    errors.bad_call("BPF.usdt", "give pid= or path=")
  end
  local path = opts.path
  if path and not path:find("/") then
    path = core.which(path) or path
  end
  local ctx, msg = core.usdt_open(opts.pid or -1, path)
  if not ctx then
    errors.raise(msg)
  end
  return setmetatable({ ctx = ctx, pid = opts.pid, path = path, enabled = {} }, USDT)
end

local ENABLE_OPTS = { "probe", "fn_name" }

--- enable_probe{ probe = "name" | "provider:name", fn_name = "fn" }
--- (also enable_probe(probe, fn_name)).
function USDT:enable_probe(a, fn_name)
  if type(a) ~= "table" then
    a = { probe = a, fn_name = fn_name }
  end
  errors.check_opts("enable_probe", a, ENABLE_OPTS)
  if not a.probe or not a.fn_name then
    errors.bad_call("enable_probe", "needs probe= and fn_name=")
  end
  local ok, msg = self.ctx:enable_probe(a.probe, a.fn_name)
  if not ok then
    errors.raise(msg)
  end
  self.enabled[#self.enabled + 1] = a
  return self
end

--- The probes found: { provider, name, path, semaphore, locations,
--- arguments } each.
function USDT:probes()
  return self.ctx:probes()
end

-- Attach a uprobe at every location of every enabled probe (BPF.new does).
function USDT:_attach(b)
  for _, u in ipairs(self.ctx:uprobes()) do
    b:attach_uprobe{ name = u.path, addr = u.addr, fn_name = u.fn_name, pid = u.pid > 0 and u.pid or nil }
  end
end

function USDT:close()
  self.ctx:close()
end

---------------------------------------------------------------------------
-- symbols (bcc's names)

--- Kernel symbol of addr: "name", or "name+0xoff" with show_offset;
--- "[unknown]" when none.
function BPF.ksym(addr, show_offset)
  return syms.ksym(addr, show_offset)
end

--- User symbol of addr in process pid: "name", "name+0xoff" with
--- show_offset, "module+0xoff" when no symbol covers it.
function BPF.sym(addr, pid, show_module, show_offset)
  return syms.usym(pid, addr, { module = show_module, offset = show_offset })
end

BPF.Table = tables.Table
--- Join BPF C sources into one program text (denet.bpf.source.compose).
BPF.compose = source.compose
-- (the rewrites, for tests and for bcc's binding)
BPF._count_ringbuf_losses = source.count_ringbuf_losses
BPF._inline_includes = source.inline_includes

--- The argument readers (C text) of the enabled probes of USDT contexts
--- (their .ctx), or nil and why.
function BPF.usdt_args(contexts)
  return core.usdt_genargs(contexts)
end

return BPF
