-- denet.bpf: BPF programs from Lua, with bcc's names.
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
local ffi = require("ffi")
local core = require("denet.core")
local ctypes = require("denet.ctypes")
local cache = require("denet.cache")
local errors = require("denet.errors")
local syms = require("denet.syms")
local sys = require("denet.sys")

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
local MAP = {
  HASH = 1, ARRAY = 2, PROG_ARRAY = 3, PERF_EVENT_ARRAY = 4, PERCPU_HASH = 5,
  PERCPU_ARRAY = 6, STACK_TRACE = 7, CGROUP_ARRAY = 8, LRU_HASH = 9,
  LRU_PERCPU_HASH = 10, LPM_TRIE = 11, QUEUE = 22, STACK = 23, RINGBUF = 27,
  TASK_STORAGE = 29,
}
BPF.MAP = MAP
-- perf_event_attr type/config for attach_perf_event
BPF.PERF_TYPE_HARDWARE, BPF.PERF_TYPE_SOFTWARE = 0, 1
BPF.PERF_COUNT_SW_CPU_CLOCK, BPF.PERF_COUNT_SW_TASK_CLOCK = 0, 1
BPF.PERF_COUNT_HW_CPU_CYCLES, BPF.PERF_COUNT_HW_INSTRUCTIONS = 0, 1

---------------------------------------------------------------------------
-- construction

-- BPF C is code a privileged denet hands to the kernel: read it through
-- the same ownership check as Lua files (host/dn_trust.c).
local function read_file(path)
  local s, err = core.trust_read(path)
  if not s then
    errors.raise((err:gsub("^cannot read ", "cannot read BPF source ")))
  end
  return s
end

local function dirname(p)
  return p:match("^(.*)/[^/]*$") or "."
end

-- The folders clang would search for #include "x": -iquote and -I ones.
local function quote_dirs(cflags)
  local dirs, i = {}, 1
  while i <= #cflags do
    local f = cflags[i]
    local d = f:match("^%-iquote(.+)$") or f:match("^%-I(.+)$")
    if not d and (f == "-I" or f == "-iquote") then
      i = i + 1
      d = cflags[i]
    end
    dirs[#dirs + 1] = d
    i = i + 1
  end
  return dirs
end

--- Put every quoted #include that names a real file in place, read through
--- the trust check, between #line markers: clang then opens no file of its
--- own (what was checked is what is compiled) and its diagnostics still
--- name file:line. An include is looked for as clang does: beside the file
--- that includes it (basedir; none for text=), then in each of dirs.
--- Includes that name no file (libbcc's virtual headers, system headers
--- with quotes) are left to clang. #pragma once is honoured.
function BPF._inline_includes(text, name, basedir, dirs, once, depth)
  once, depth = once or {}, depth or 0
  if depth > 32 then
    errors.script(string.format("%s: #include nested more than 32 deep", name))
  end
  local out = {}
  local file, line = name, 0
  for l in (text .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do
    line = line + 1
    local ln, fname = l:match('^%s*#%s*line%s+(%d+)%s*"([^"]*)"')
    local inc = not ln and l:match('^%s*#%s*include%s*"([^"]+)"')
    local path
    if inc then
      local cands = {}
      if inc:sub(1, 1) == "/" then
        cands[1] = inc
      else
        if basedir then
          cands[1] = basedir .. "/" .. inc
        end
        for _, d in ipairs(dirs) do
          cands[#cands + 1] = d .. "/" .. inc
        end
      end
      for _, c in ipairs(cands) do
        local st = core.stat(c)
        if st and not st.dir then
          path = c
          break
        end
      end
    end
    if ln then
      file, line = fname, tonumber(ln) - 1
      out[#out + 1] = l
    elseif path then
      if not once[path] then
        local body = read_file(path)
        local pragma
        body, pragma = ("\n" .. body):gsub("\n%s*#%s*pragma%s+once[^\n]*", "\n")
        body = body:sub(2)
        if pragma > 0 then
          once[path] = true
        end
        out[#out + 1] = string.format('#line 1 "%s"', path)
        out[#out + 1] = BPF._inline_includes(body, path, dirname(path), dirs, once, depth + 1)
      end
      out[#out + 1] = string.format('#line %d "%s"', line + 1, file)
    else
      out[#out + 1] = l
    end
  end
  return table.concat(out, "\n")
end

-- Where did the Lua code that called BPF.new live? (for messages)
local function caller_place(level)
  local info = debug.getinfo(level, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return string.format("%s:%d", info.short_src, info.currentline)
  end
  return "BPF.new"
end

-- clang's diagnostics split into blocks: an "In file included from"
-- chain, then one diagnostic line and its source, caret and notes.
local function diagnostic_blocks(lines)
  local blocks, cur = {}, nil
  for _, line in ipairs(lines) do
    local chain = line:find("^In file included from")
    local kind = line:match(": (%a+): ") or line:match("^(%a+): ")
    if kind ~= "warning" and kind ~= "error" and kind ~= "fatal" then
      kind = nil
    end
    local starts = not cur or (chain and not cur.chain_open) or (kind and cur.kind)
    if starts then
      cur = { lines = {}, chain_open = false }
      blocks[#blocks + 1] = cur
    end
    cur.chain_open = chain and true or false
    if kind and not cur.kind then
      cur.kind = kind
    end
    cur.lines[#cur.lines + 1] = line
  end
  return blocks
end

-- clang's diagnostics, with the virtual file name replaced by ours; when
-- there are errors, the warnings (with their include chains) go, so the
-- errors come first; long reports are cut.
local function tidy_diagnostics(diag, name)
  diag = diag:gsub("/virtual/main%.c", name)
  local lines = {}
  for line in diag:gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  if diag:find("error:") then
    local kept = {}
    for _, b in ipairs(diagnostic_blocks(lines)) do
      if b.kind ~= "warning" then
        for _, l in ipairs(b.lines) do
          kept[#kept + 1] = l
        end
      end
    end
    lines = kept
  end
  if #lines > 60 then
    local head = {}
    for i = 1, 50 do
      head[i] = lines[i]
    end
    head[#head + 1] = string.format("... (%d more lines)", #lines - 50)
    lines = head
  end
  return table.concat(lines, "\n")
end

local function count_errors(diag)
  local n = 0
  for _ in diag:gmatch("error:") do
    n = n + 1
  end
  return n
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
    local cand = dirname(src:sub(2)) .. "/" .. path
    if core.stat(cand) then
      return cand
    end
  end
  return path
end

local NEW_OPTS = { "text", "src_file", "cflags", "name", "autoattach", "warnings", "debug", "usdt", "cache",
  "before_attach" }

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
  if opts == BPF then
    opts = more
  end
  if type(opts) == "string" then
    opts = { text = opts }
  end
  if type(opts) ~= "table" then
    error("BPF.new: give a table of options (text= or src_file=, ...)", 2)
  end
  errors.check_opts("BPF.new", opts, NEW_OPTS)
  if (opts.text == nil) == (opts.src_file == nil) then
    errors.bad_call("BPF.new", "give exactly one of text= or src_file=")
  end
  local place = errors.where(2) or caller_place(3)
  sys.require_bpf()
  local text = opts.text
  local name = opts.name or "bpf.c"
  local basedir
  if opts.src_file then
    local path = find_src_file(opts.src_file, 2)
    text = read_file(path)
    name = opts.name or opts.src_file
    basedir = dirname(path)
  end
  local usdts = opts.usdt
  if usdts and getmetatable(usdts) == BPF.USDT then
    usdts = { usdts }
  end
  if usdts then
    local list = {}
    for i, u in ipairs(usdts) do
      if getmetatable(u) ~= BPF.USDT then
        error(string.format("BPF.new: usdt[%d] is not a USDT context (BPF.usdt{...})", i), 2)
      end
      list[i] = u.ctx
    end
    local args, msg = core.usdt_genargs(list)
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
  text = BPF._inline_includes(text, name, basedir, quote_dirs(cflags))
  local t0 = core.monotonic()
  -- A program compiled before from the same text and flags loads from
  -- the cache. The key is taken before the rewrites below: they depend
  -- only on the text and on the kernel and headers, which the key covers.
  local key = opts.cache ~= false and cache.program_key(text, cflags, opts.debug)
  local cpath = key and cache.program_path(key)
  local m
  if cpath then
    local why, reason
    m, why, reason = core.bpf_cache_load(cpath, key)
    if not m and reason ~= "absent" and reason ~= "other" then
      cache.note(name, why)
    end
  end
  -- what autoattach will load, loaded now: a kept program the kernel
  -- refuses is compiled again (attach errors are the caller's, as usual)
  if m and opts.autoattach ~= false then
    for _, fn in ipairs(m:functions()) do
      local ptype = BPF._auto_type(fn)
      local fd, log = true, nil
      if ptype then
        fd, log = m:load(fn, ptype)
      end
      if not fd then
        m:close()
        m = nil
        os.remove(cpath) -- not to be tried again, whatever the compile gives
        cache.note(name, string.format("the kernel refused %s: %s", fn, tostring(log):match("[^\n]*")))
        break
      end
    end
  end
  local ringbufs = BPF._ringbuf_names(text)
  local fresh = m == nil
  if fresh then
    -- kernel structs as the running kernel lays them out (or one line)
    local ctext, cfl = require("denet.ktypes").apply(text, cflags, name)
    ctext = BPF._fix_lines(BPF._count_ringbuf_losses(ctext), name)
    local diag
    m, diag = core.bpf_compile(ctext, false, cfl, opts.debug)
    if not m then
      local n = count_errors(diag)
      errors.script(string.format("%s: failed to compile BPF module %s (%d error%s):\n%s", place, name, n,
        n == 1 and "" or "s", tidy_diagnostics(diag, name)))
    end
    if opts.warnings and diag:find("warning:") then
      io.stderr:write(tidy_diagnostics(diag, name), "\n")
    end
  end
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
    ringbuf_index = ringbufs,
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

--- Join BPF C sources into one program text: each part is a file name in
--- bpf-src/ ("tree.c") or { name = ..., text = ... }. A #line directive
--- before each part keeps clang's diagnostics in the part's own lines.
--- TRACEPOINT_PROBE functions must be in the program's main text for
--- libbcc to type their arguments, so shared probes are composed, not
--- #included.
function BPF.compose(parts)
  local out = {}
  for _, part in ipairs(parts) do
    local name, text
    if type(part) == "table" then
      name, text = part.name or "bpf.c", part.text
    else
      name, text = part, read_file(core.root .. "/bpf-src/" .. part)
    end
    out[#out + 1] = string.format('#line 1 "%s"', name)
    out[#out + 1] = text
  end
  return table.concat(out, "\n")
end

-- The ring buffers of a text: name -> index of its loss counter, and the
-- names in order (nil when there is none).
function BPF._ringbuf_names(text)
  local names, index = {}, {}
  for name in text:gmatch("BPF_RINGBUF_OUTPUT%s*%(%s*([%w_]+)") do
    if not index[name] then
      names[#names + 1] = name
      index[name] = #names - 1
    end
  end
  if #names == 0 then
    return nil
  end
  return index, names
end

-- Ring buffers cannot tell user space what they dropped: a full buffer
-- makes ringbuf_output/ringbuf_reserve fail in the program. Rewrite those
-- calls so each failure also bumps a per-CPU counter per ring buffer
-- (__denet_rb_lost). The counter is declared on the line of the first
-- BPF_RINGBUF_OUTPUT and every rewrite stays on its line, so clang's line
-- numbers still match the user's text. Returns the text and name -> index.
function BPF._count_ringbuf_losses(text)
  local index, names = BPF._ringbuf_names(text)
  if not index then
    return text, nil
  end
  for i, name in ipairs(names) do
    local id = tostring(i - 1)
    text = text:gsub("([%w_]*)(" .. name .. "%.ringbuf_output)(%b())", function(pre, call, args)
      if pre ~= "" then
        return nil
      end
      return "({ int __dn_r = " .. call .. args .. "; if (__dn_r) __denet_rb_lost_inc(" .. id
        .. "); __dn_r; })"
    end)
    text = text:gsub("([%w_]*)(" .. name .. "%.ringbuf_reserve)(%b())", function(pre, call, args)
      if pre ~= "" then
        return nil
      end
      return "({ void *__dn_p = " .. call .. args .. "; if (!__dn_p) __denet_rb_lost_inc(" .. id
        .. "); __dn_p; })"
    end)
  end
  local decl = string.format(" BPF_PERCPU_ARRAY(__denet_rb_lost, u64, %d);"
    .. " static __always_inline void __denet_rb_lost_inc(u32 i) {"
    .. " u64 *c = __denet_rb_lost.lookup(&i); if (c) (*c)++; }", #names)
  text = text:gsub("(BPF_RINGBUF_OUTPUT%s*%b()%s*;)", "%1" .. decl, 1)
  return text, index
end

-- libbcc inserts the definition of each tracepoint's argument struct just
-- before its TRACEPOINT_PROBE function, which moves every later line of
-- clang's diagnostics down. A #line directive right after each probe's
-- opening brace puts the numbering back, so errors point at the user's
-- lines. Lines of `text` already carrying #line directives (composed
-- sources) are followed.
function BPF._fix_lines(text, name)
  local out = {}
  local file, line = name, 0
  local pending = false -- inside a TRACEPOINT_PROBE header, before its '{'
  for l in (text .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do
    line = line + 1
    local ln, fname = l:match('^%s*#%s*line%s+(%d+)%s*"([^"]*)"')
    if ln then
      out[#out + 1] = l
      file, line = fname, tonumber(ln) - 1
    else
      if l:find("TRACEPOINT_PROBE%s*%(") then
        pending = true
      end
      local brace = pending and l:find("{", 1, true)
      if brace then
        pending = false
        out[#out + 1] = l:sub(1, brace)
        out[#out + 1] = string.format('#line %d "%s"', line, file)
        -- spaces keep clang's column numbers right for the rest of the line
        out[#out + 1] = string.rep(" ", brace) .. l:sub(brace + 1)
      else
        out[#out + 1] = l
      end
    end
  end
  return table.concat(out, "\n")
end

-- The program type autoattach loads function `fn` as, or nil.
function BPF._auto_type(fn)
  if fn:match("^tracepoint__") then
    return BPF.TRACEPOINT
  elseif fn:match("^raw_tracepoint__") then
    return BPF.RAW_TRACEPOINT
  elseif fn:match("^kprobe__") or fn:match("^kretprobe__") then
    return BPF.KPROBE
  end
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
-- tables

local Table = {}
Table.__index = Table

local PERCPU = { [MAP.PERCPU_HASH] = true, [MAP.PERCPU_ARRAY] = true, [MAP.LRU_PERCPU_HASH] = true }
local ARRAYS = { [MAP.ARRAY] = true, [MAP.PERCPU_ARRAY] = true, [MAP.PERF_EVENT_ARRAY] = true,
  [MAP.PROG_ARRAY] = true, [MAP.CGROUP_ARRAY] = true }

--- The table named `name` (as declared with BPF_HASH, BPF_ARRAY, ...).
function BPF:get_table(name)
  local t = self.tables[name]
  if t then
    return t
  end
  local info = self.m:table_info(name)
  if not info then
    error(string.format("no BPF table named '%s' (tables: %s)", name, table.concat(self.m:tables(), ", ")), 2)
  end
  t = setmetatable({ bpf = self, name = name, info = info, fd = info.fd, type = info.type }, Table)
  t.key = ctypes.from_desc(info.key_desc, info.key_size)
  t.leaf = ctypes.from_desc(info.leaf_desc, info.leaf_size)
  t.key_arr = ffi.typeof(t.key.name .. "[1]")
  t.leaf_arr = ffi.typeof(t.leaf.name .. "[1]")
  t.key_ptr = ffi.typeof(t.key.name .. " *")
  t.leaf_ptr = ffi.typeof(t.leaf.name .. " *")
  t.percpu = PERCPU[info.type] or false
  t.is_array = ARRAYS[info.type] or false
  if t.percpu then
    t.ncpus = sys.possible_cpus()
    t.stride = math.ceil(info.leaf_size / 8) * 8
    t.value_size = t.stride * t.ncpus
  else
    t.value_size = info.leaf_size
  end
  self.tables[name] = t
  return t
end

-- A key buffer from a Lua value: a number, a cdata of the key type, or a
-- table of fields.
function Table:_key(k)
  local buf = self.key_arr()
  if type(k) == "number" then
    if self.key.scalar then
      buf[0] = k
    else
      error(string.format("table %s: key must be a %s, not a number", self.name, self.key.decl), 3)
    end
  elseif type(k) == "cdata" then
    if ffi.istype(self.key.ct, k) then
      buf[0] = k
    else
      -- a 64-bit integer cdata for a scalar key
      buf[0] = k
    end
  elseif type(k) == "table" then
    buf[0] = self.key.ct(k)
  else
    error(string.format("table %s: bad key %s", self.name, tostring(k)), 3)
  end
  return buf
end

-- A Lua value from one leaf at ptr: numbers for small integers, uint64
-- cdata for 64-bit ones, a copy of the struct otherwise.
local function leaf_value(desc, ptr)
  if desc.scalar == "small" or desc.scalar == "float" then
    return tonumber(ptr[0])
  elseif desc.scalar == "wide" then
    return ptr[0] + 0ULL
  end
  local v = desc.ct()
  ffi.copy(v, ptr, desc.size)
  return v
end
Table._leaf_value = leaf_value

local function key_value(desc, ptr)
  return leaf_value(desc, ptr)
end

-- Per-CPU value buffer -> list of leaf values (1-based, CPU order).
function Table:_percpu_values(bytes_ptr)
  local out = {}
  for cpu = 0, self.ncpus - 1 do
    out[cpu + 1] = leaf_value(self.leaf, ffi.cast(self.leaf_ptr, bytes_ptr + cpu * self.stride))
  end
  return out
end

--- The leaf for key k, or nil. Per-CPU tables give a list of per-CPU
--- leaves (use :sum(k) for the total).
function Table:get(k)
  local kb = self:_key(k)
  local vb = ffi.new("uint8_t[?]", self.value_size)
  local ok, msg = core.map_lookup(self.fd, kb, vb)
  if ok == nil then
    error(string.format("table %s: %s", self.name, msg), 2)
  end
  if not ok then
    return nil
  end
  if self.percpu then
    return self:_percpu_values(vb)
  end
  return leaf_value(self.leaf, ffi.cast(self.leaf_ptr, vb))
end

--- Set key k to v (a number, a cdata leaf, or a table of fields).
--- flags: 0 any, 1 only new, 2 only existing (BPF_NOEXIST/BPF_EXIST).
function Table:set(k, v, flags)
  local kb = self:_key(k)
  local vb
  if self.percpu then
    vb = ffi.new("uint8_t[?]", self.value_size)
    for cpu = 0, self.ncpus - 1 do
      local p = ffi.cast(self.leaf_ptr, vb + cpu * self.stride)
      local x = type(v) == "table" and not self.leaf.scalar and v or (type(v) == "table" and v[cpu + 1] or v)
      if x ~= nil then
        p[0] = type(x) == "table" and self.leaf.ct(x) or x
      end
    end
  else
    vb = self.leaf_arr()
    vb[0] = (type(v) == "table") and self.leaf.ct(v) or v
  end
  local ok, msg = core.map_update(self.fd, kb, vb, flags or 0)
  if not ok then
    error(string.format("table %s: %s", self.name, msg), 2)
  end
end

--- Remove key k; returns true if it was there.
function Table:delete(k)
  local ok, msg = core.map_delete(self.fd, self:_key(k))
  if ok == nil then
    error(string.format("table %s: %s", self.name, msg), 2)
  end
  return ok
end

--- Iterate over (key, leaf) pairs of a snapshot taken now, in one pass
--- over the map. Keys and leaves are typed as the BPF program declared them
--- (k.pid, v.count); per-CPU leaves are lists.
function Table:items()
  local keys, leaves, n = core.map_dump(self.fd, self.info.key_size, self.value_size,
    math.max(self.info.max_entries, 1) * 2)
  if not keys then
    error(string.format("table %s: %s", self.name, leaves), 2)
  end
  local kbase = ffi.cast("const uint8_t *", keys)
  local vbase = ffi.cast("const uint8_t *", leaves)
  local ks, vs = self.info.key_size, self.value_size
  local i = -1
  return function()
    local _, _ = keys, leaves -- the pointers point into them: alive while iterating
    i = i + 1
    if i >= n then
      return nil
    end
    local k = key_value(self.key, ffi.cast(self.key_ptr, kbase + i * ks))
    if self.percpu then
      return k, self:_percpu_values(vbase + i * vs)
    end
    return k, leaf_value(self.leaf, ffi.cast(self.leaf_ptr, vbase + i * vs))
  end
end

--- Number of entries (a hash's live keys; an array's size).
function Table:len()
  local _, _, n = core.map_dump(self.fd, self.info.key_size, self.value_size,
    math.max(self.info.max_entries, 1) * 2)
  return n or 0
end

function Table:keys()
  local it = self:items()
  return function()
    local k = it()
    return k
  end
end

function Table:values()
  local it = self:items()
  return function()
    local _, v = it()
    return v
  end
end

--- Remove every entry (arrays: zero every leaf).
function Table:clear()
  if self.is_array then
    local zero = ffi.new("uint8_t[?]", self.value_size)
    for i = 0, self.info.max_entries - 1 do
      core.map_update(self.fd, self:_key(i), zero, 0)
    end
    return
  end
  local ok, msg = core.map_clear(self.fd, self.info.key_size)
  if not ok then
    error(string.format("table %s: %s", self.name, msg), 2)
  end
end

-- Sum per-CPU leaves: numbers add; structs add field by field.
function Table:_sum_list(list)
  if self.leaf.scalar then
    local s = self.leaf.scalar == "wide" and 0ULL or 0
    for _, v in ipairs(list) do
      s = s + v
    end
    return s
  end
  local out = self.leaf.ct()
  for _, f in ipairs(self.leaf.fields or {}) do
    if f.kind then
      local s = 0ULL
      for _, v in ipairs(list) do
        s = s + v[f.name]
      end
      out[f.name] = s
    end
  end
  return out
end

--- Per-CPU tables: the leaf for key k summed over CPUs (nil if absent).
function Table:sum(k)
  if not self.percpu then
    return self:get(k)
  end
  local list = self:get(k)
  return list and self:_sum_list(list)
end

--- Per-CPU tables: iterate over (key, leaf summed over CPUs).
function Table:items_sum()
  local it = self:items()
  return function()
    local k, list = it()
    if k == nil then
      return nil
    end
    if self.percpu then
      return k, self:_sum_list(list)
    end
    return k, list
  end
end

--- Stack trace tables: the addresses (uint64 cdata, leaf first) of stack
--- id, or an empty list when the id is negative or gone.
function Table:stack_walk(id)
  local out = {}
  id = tonumber(id)
  if not id or id < 0 then
    return out
  end
  local v = self:get(id)
  if not v then
    return out
  end
  local ips = v.ip
  local n = self.info.leaf_size / 8
  for i = 0, n - 1 do
    local a = ips[i]
    if a == 0 then
      break
    end
    out[#out + 1] = a + 0ULL
  end
  return out
end

---------------------------------------------------------------------------
-- events

local Buffer = {}
Buffer.__index = Buffer

function Buffer:close()
  if self.src then
    self.src:close()
    self.src = nil
  end
end

--- Records lost so far: perf buffers count what the kernel dropped;
--- ring buffers count failed ringbuf_output/ringbuf_reserve calls of the
--- program (see docs/lua-api.md).
function Buffer:lost()
  if self.kind == "perf" then
    return self.src and core.loop_lost(self.src.id) or self.lost_final or 0
  end
  return self.table.bpf:ringbuf_lost(self.table.name)
end

local function event_type(self)
  local ev = ctypes.from_fields(self.info.fields)
  return ev
end

-- Wrap a user callback so it receives typed records (and, from perf
-- buffers, the CPU that wrote them).
local function typed_cb(ev, cb)
  local ptr_t = ev and ffi.typeof(ev.name .. " *") or ffi.typeof("const uint8_t *")
  return function(p, size, cpu)
    cb(ffi.cast(ptr_t, p), size, cpu)
  end
end

--- Perf event array tables (BPF_PERF_OUTPUT): call cb(record, size, cpu)
--- for each record, typed as the struct passed to perf_submit (raw bytes
--- when libbcc could not describe it). opts.page_cnt (default 64 pages per
--- CPU), opts.lost_cb(n, cpu), opts.type (an ffi type to use instead).
--- Records are only valid during the callback: copy what you keep.
local PERFBUF_OPTS = { "type", "page_cnt", "lost_cb" }
local RINGBUF_OPTS = { "type" }

function Table:open_perf_buffer(cb, opts)
  if type(opts) == "string" then
    errors.bad_call("open_perf_buffer", "takes (cb, { type =, page_cnt =, lost_cb = }) and calls cb(record, size, "
      .. "cpu); bcc's form (cb, \"C type\", params, page_cnt, lost_cb) calling cb(cpu, event) is "
      .. "require(\"bcc\")'s")
  end
  errors.check_opts("open_perf_buffer", opts, PERFBUF_OPTS)
  opts = opts or {}
  if self.type ~= MAP.PERF_EVENT_ARRAY then
    error(string.format("table %s is not a BPF_PERF_OUTPUT", self.name), 2)
  end
  local ev = opts.type and { name = opts.type } or event_type(self)
  local id, msg = core.loop_perfbuf(self.fd, sys.online_cpus(), opts.page_cnt or 64, typed_cb(ev, cb),
    opts.lost_cb)
  if not id then
    errors.raise(msg)
  end
  local b = setmetatable({ kind = "perf", table = self, src = require("denet")._source(id) }, Buffer)
  self.bpf.buffers[self.name] = b
  return b
end

--- Ring buffer tables (BPF_RINGBUF_OUTPUT): like open_perf_buffer.
function Table:open_ring_buffer(cb, opts)
  errors.check_opts("open_ring_buffer", opts, RINGBUF_OPTS)
  opts = opts or {}
  if self.type ~= MAP.RINGBUF then
    error(string.format("table %s is not a BPF_RINGBUF_OUTPUT", self.name), 2)
  end
  local ev = opts.type and { name = opts.type } or event_type(self)
  local id, msg = core.loop_ringbuf(self.fd, typed_cb(ev, cb))
  if not id then
    errors.raise(msg)
  end
  local b = setmetatable({ kind = "ring", table = self, src = require("denet")._source(id) }, Buffer)
  self.bpf.buffers[self.name] = b
  return b
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

BPF.Table = Table
return BPF
