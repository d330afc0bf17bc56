-- denet.stacks.python: the Python frames of CPython 3.11 programs.
--
-- The kernel reads them as a thread blocks (bpf-src/python.c): each frame's
-- code object and instruction. This module
--   * finds the interpreters among the processes whose mappings the
--     unwinder loads (a mapped file that exports _PyRuntime), checks the
--     version and the layout against what the binary exports, and tells
--     the kernel about them (dn_py_procs);
--   * reads each new stack's code objects (names, file, line table) while
--     the process lives, and checks each against what the kernel saw (its
--     type, its first line: a code object's memory can be reused);
--   * turns (code, instruction) into `function (file.py:LINE)`, and puts
--     each run of Python frames in place of the _PyEval_EvalFrameDefault
--     C frame that ran it;
--   * walks a thread's frames through /proc/PID/mem (`offcpu --now`).
-- Debian 12's python3.11 has no debug information: the offsets are those
-- of 3.11's headers, and a process whose structures do not hold what they
-- must (a code object's type is &PyCode_Type) gets native frames only.
local ffi = require("ffi")
local core = require("denet.core")
local records = require("denet.records")
local util = require("denet.util")

local M = {}

M.FRAMES = records.const.DN_PY_FRAMES
M.ENTRY = records.const.DN_PY_ENTRY
M.EVAL = "_PyEval_EvalFrameDefault"

-- CPython 3.11's structures (Include/internal/pycore_*.h, cpython/*.h):
-- the byte offsets python.c and the reads here use. Checked on Debian's
-- 3.11.2 against python3.11-dbg's DWARF.
M.LAYOUT = {
  RT_INTERPS = 40, -- _PyRuntimeState.interpreters.head
  IS_NEXT = 0, -- PyInterpreterState.next
  IS_THREADS = 16, -- PyInterpreterState.threads.head
  TS_NEXT = 8, -- PyThreadState.next
  TS_INTERP = 16, -- PyThreadState.interp
  TS_CFRAME = 56, -- PyThreadState.cframe
  TS_TID = 160, -- PyThreadState.native_thread_id
  CF_FRAME = 8, -- _PyCFrame.current_frame
  F_CODE = 32, -- _PyInterpreterFrame.f_code
  F_PREVIOUS = 48, -- .previous
  F_INSTR = 56, -- .prev_instr
  F_ENTRY = 68, -- .is_entry
  F_SIZE = 72, -- (the bytes read of a frame)
  CO_TYPE = 8, -- PyCodeObject.ob_type
  CO_FIRST = 72, -- .co_firstlineno
  CO_FILENAME = 112, CO_NAME = 120, CO_QUALNAME = 128, CO_LINETABLE = 136,
  CO_CODE = 184, -- .co_code_adaptive
  CO_SIZE = 80, -- (the bytes read of a code object)
}
local L = M.LAYOUT

--- The -D flags of the layout, for bpf-src/python.c.
function M.cflags()
  local f = {}
  for k, v in pairs(L) do
    f[#f + 1] = string.format("-DDN_PY_%s=%d", k, v)
  end
  table.sort(f)
  return f
end

---------------------------------------------------------------------------
-- a process's memory

--- A reader of process pid's memory (/proc/PID/mem, no stop): read(addr,
--- n) -> n bytes or nil; u64(addr), u32(addr), s32(addr); close(). Nil
--- when the process cannot be read.
function M.memory(pid)
  local f = io.open("/proc/" .. pid .. "/mem", "rb")
  if not f then
    return nil
  end
  local m = { pid = pid }
  function m.read(addr, n)
    if not addr or addr <= 0 or addr >= 2 ^ 47 or not f:seek("set", addr) then
      return nil
    end
    local b = f:read(n)
    return b and #b == n and b or nil
  end
  function m.u64(addr)
    local b = m.read(addr, 8)
    return b and tonumber(ffi.cast("const uint64_t *", b)[0])
  end
  function m.u32(addr)
    local b = m.read(addr, 4)
    return b and tonumber(ffi.cast("const uint32_t *", b)[0])
  end
  function m.s32(addr)
    local b = m.read(addr, 4)
    return b and tonumber(ffi.cast("const int32_t *", b)[0])
  end
  function m.close()
    f:close()
  end
  return m
end

-- A code point as UTF-8.
local function utf8(c)
  if c < 0x80 then
    return string.char(c)
  elseif c < 0x800 then
    return string.char(0xc0 + math.floor(c / 64), 0x80 + c % 64)
  elseif c < 0x10000 then
    return string.char(0xe0 + math.floor(c / 4096), 0x80 + math.floor(c / 64) % 64, 0x80 + c % 64)
  end
  return string.char(0xf0 + math.floor(c / 262144), 0x80 + math.floor(c / 4096) % 64,
    0x80 + math.floor(c / 64) % 64, 0x80 + c % 64)
end

local MAX_STR = 4096

--- The text of a str object at addr (3.11's compact forms), or nil.
function M.read_str(mem, addr)
  local len, state = mem.u64(addr + 16), mem.u32(addr + 32)
  if not len or not state or len > MAX_STR then
    return nil
  end
  local kind, compact, ascii = math.floor(state / 4) % 8, math.floor(state / 32) % 2, math.floor(state / 64) % 2
  if compact == 0 then
    return nil
  end
  if ascii == 1 then
    return len == 0 and "" or mem.read(addr + 48, len)
  end
  local raw = len == 0 and "" or mem.read(addr + 72, len * kind)
  if not raw or kind == 0 then
    return nil
  end
  local out, p = {}, ffi.cast("const uint8_t *", raw)
  for i = 0, len - 1 do
    local c = 0
    for b = kind - 1, 0, -1 do
      c = c * 256 + p[i * kind + b]
    end
    out[#out + 1] = utf8(c)
  end
  return table.concat(out)
end

---------------------------------------------------------------------------
-- line tables (3.11's co_linetable: Objects/locations.md)

--- The line, column and end column (0-based, in bytes of the line) of
--- instruction instr (code units from the start) of a code object that
--- begins at line first with line table lt; nil line when it has none.
function M.line_of(lt, first, instr)
  local p, n, addr, line = 1, #lt, 0, first
  local function byte()
    local b = lt:byte(p)
    p = p + 1
    return b or 0
  end
  local function varint()
    local b = byte()
    local v, shift = b % 64, 6
    while b >= 64 and b < 128 and p <= n do
      b = byte()
      v = v + (b % 64) * 2 ^ shift
      shift = shift + 6
    end
    return v
  end
  local function svarint()
    local v = varint()
    return v % 2 == 1 and -math.floor(v / 2) or math.floor(v / 2)
  end
  while p <= n do
    local b = byte()
    local code, len = math.floor(b / 8) % 16, b % 8 + 1
    -- (15: no location)
    local l, col, endcol = nil, nil, nil
    if code == 14 then
      line = line + svarint()
      varint() -- the end line
      col, endcol = varint() - 1, varint() - 1
      l = line
    elseif code == 13 then
      line = line + svarint()
      l = line
    elseif code >= 10 and code <= 12 then
      line = line + code - 10
      col, endcol = byte(), byte()
      l = line
    elseif code < 10 then
      local b2 = byte()
      col = code * 8 + math.floor(b2 / 16)
      endcol = col + b2 % 16
      l = line
    end
    if instr < addr + len then
      return l, col, endcol
    end
    addr = addr + len
  end
  return nil
end

---------------------------------------------------------------------------
-- processes

local sym_cache = {}
local WANT = { _PyRuntime = true, PyCode_Type = true, Py_Version = true }

-- The interpreter's exports in the file of mapping m: { runtime,
-- code_type, version } as addresses in the process, or nil.
local function exports_of(pid, m)
  local s = sym_cache[m.key]
  if s == nil then
    local syms = core.elf_symbols("/proc/" .. pid .. "/map_files/" .. string.format("%x-%x", m.start, m["end"]),
      WANT) or core.elf_symbols(m.path, WANT)
    s = syms and syms._PyRuntime and syms or false
    sym_cache[m.key] = s
  end
  if not s then
    return nil
  end
  local bias = m.bias or 0
  return { runtime = s._PyRuntime + bias, code_type = s.PyCode_Type and s.PyCode_Type + bias,
    version = s.Py_Version and s.Py_Version + bias, path = m.path }
end

--- Is the layout what 3.11's is, as far as process pid's interpreter can
--- tell now? "ok", "not yet" (no interpreter or thread running yet), or
--- false and why.
function M.check(mem, py, pid)
  local interp = mem.u64(py.runtime + L.RT_INTERPS)
  if interp == nil then
    return false, "its runtime state cannot be read"
  elseif interp == 0 then
    return "not yet"
  end
  -- its threads (a thread state's native_thread_id is 0 until its
  -- thread has begun)
  local ts, n, seen = mem.u64(interp + L.IS_THREADS), 0, 0
  while ts and ts ~= 0 and n < 64 do
    n = n + 1
    if mem.u64(ts + L.TS_INTERP) ~= interp then
      return false, "a thread state does not point back at its interpreter"
    end
    local tid = mem.u64(ts + L.TS_TID)
    if tid ~= 0 then
      if not tid or not core.read_file(string.format("/proc/%d/task/%d/stat", pid, tid)) then
        return false, "a thread state's native_thread_id is no thread of it"
      end
      seen = seen + 1
      local cf = mem.u64(ts + L.TS_CFRAME)
      local f = cf and cf ~= 0 and mem.u64(cf + L.CF_FRAME)
      local code = f and f ~= 0 and mem.u64(f + L.F_CODE)
      if code and code ~= 0 and mem.u64(code + L.CO_TYPE) ~= py.code_type then
        return false, "a frame's code object is not of type PyCode_Type"
      end
    end
    ts = mem.u64(ts + L.TS_NEXT)
  end
  return seen > 0 and "ok" or "not yet"
end

--- What process pid runs (maps: its executable mappings, from
--- denet.stacks.dwarf.proc_maps): { runtime, code_type, version, check }
--- for a CPython 3.11 whose layout holds; nil for no interpreter; false
--- and why for one whose frames cannot be read (said once).
function M.detect(pid, maps)
  local py
  for _, m in ipairs(maps or {}) do
    py = m.path:sub(1, 1) == "/" and exports_of(pid, m)
    if py then
      break
    end
  end
  if not py then
    return nil
  end
  local mem = M.memory(pid)
  if not mem then
    return nil
  end
  local v = py.version and mem.u32(py.version)
  local why
  if not v or not py.code_type then
    why = "it exports no Py_Version or PyCode_Type"
  elseif math.floor(v / 65536) ~= 0x030b then
    why = string.format("it is Python %d.%d, and denet reads the frames of 3.11 only", math.floor(v / 2 ^ 24),
      math.floor(v / 65536) % 256)
  else
    local ok, err = M.check(mem, py, pid)
    py.check = ok
    why = not ok and "its structures are not 3.11's: " .. err or nil
  end
  mem.close()
  if why then
    M.refuse(py, why)
    return false, why
  end
  return py
end

--- Say (once) that the frames of the interpreter py are not read, and why.
function M.refuse(py, why)
  util.note_once(string.format("Python frames of %s are not read (native frames only): %s", py.path, why))
end

---------------------------------------------------------------------------
-- the reader of a program's stacks

local Reader = {}
Reader.__index = Reader

--- Feed the program's Python walker (bpf: a program with -DDN_PYTHON):
--- processes are told it through :process (the unwinder calls it as it
--- loads their mappings); new stacks' code objects are read as they come.
function M.start(bpf)
  local self = setmetatable({ bpf = bpf, procs = bpf:get_table("dn_py_procs"), stacks = bpf:get_table("dn_py_stacks"),
    codes = {}, seen = {}, image = {}, pending = {}, failed = {} }, Reader)
  self.buf = bpf:get_table("dn_py_new"):open_ring_buffer(function(rec)
    self:read_codes(rec.tgid, rec.id)
  end, { type = records.cname("dn_py_new_rec") })
  return self
end

--- Process pid's mappings were loaded (maps, denet.stacks.dwarf's; image:
--- how many times it exec'd): if it runs a CPython 3.11, its frames are
--- read from now on. (Its mappings loaded again for the same image: what
--- was found stands.)
function Reader:process(pid, maps, image)
  if self.seen[pid] ~= nil and self.image[pid] == image then
    return
  end
  self.image[pid] = image
  local py = M.detect(pid, maps)
  if py then
    local v = self.procs.leaf.ct()
    v.runtime, v.code_type = py.runtime, py.code_type
    self.procs:set(pid, v)
    self.seen[pid] = py
    -- (not begun yet: checked once it has a thread)
    self.pending[pid] = py.check == "not yet" and py or nil
  else
    pcall(self.procs.delete, self.procs, pid)
    self.seen[pid] = false
  end
  self.codes[pid] = nil
end

--- Process pid has exited: a process that takes its pid is found anew
--- (its code objects stay, for its stacks' names).
function Reader:forget(pid)
  pcall(self.procs.delete, self.procs, pid)
  self.seen[pid], self.image[pid], self.pending[pid] = nil, nil, nil
end

--- Check the layout of the interpreters that had not begun when they
--- were found (from the loop, at intervals): one that fails it has its
--- frames read no more, and none of its stacks' Python frames shown.
function Reader:tick()
  for pid, py in pairs(self.pending) do
    local mem = M.memory(pid)
    local ok, why = "gone", nil
    if mem then
      ok, why = M.check(mem, py, pid)
      mem.close()
    end
    if ok ~= "not yet" then
      self.pending[pid] = nil
    end
    if not ok then
      M.refuse(py, "its structures are not 3.11's: " .. why)
      pcall(self.procs.delete, self.procs, pid)
      self.seen[pid], self.failed[pid] = false, true
    end
  end
end

-- A code object of process pid at addr, read now: { name, file, first,
-- linetable }, or false when it is not one (any more) with first line
-- first.
local function read_code(mem, py, addr, first)
  if mem.u64(addr + L.CO_TYPE) ~= py.code_type or mem.s32(addr + L.CO_FIRST) ~= first then
    return false
  end
  local qual = mem.u64(addr + L.CO_QUALNAME)
  local name = qual and M.read_str(mem, qual)
  if not name then
    local n = mem.u64(addr + L.CO_NAME)
    name = n and M.read_str(mem, n)
  end
  local fn = mem.u64(addr + L.CO_FILENAME)
  local file = fn and M.read_str(mem, fn)
  local lt = mem.u64(addr + L.CO_LINETABLE)
  local ltlen = lt and mem.u64(lt + 16)
  local ltab = ltlen and ltlen < 1048576 and (ltlen == 0 and "" or mem.read(lt + 32, ltlen))
  if not name or not file then
    return false
  end
  -- (a path as the program was given it: from its working directory)
  local src = file
  if file:sub(1, 1) ~= "/" and not file:match("^<") and mem.pid then
    local cwd = core.readlink("/proc/" .. mem.pid .. "/cwd")
    src = cwd and (cwd .. "/" .. file) or nil
  end
  return { name = name, file = file, src = src, first = first, linetable = ltab or "" }
end

--- Stack id of process tgid is new: read the code objects it names that
--- are not read yet.
function Reader:read_codes(tgid, id)
  local py = self.seen[tgid]
  local st = py and self.stacks:get(id)
  if not st then
    return
  end
  local codes = self.codes[tgid] or {}
  self.codes[tgid] = codes
  local mem
  for i = 0, math.min(st.n, M.FRAMES) - 1 do
    local f = st.f[i]
    local key = tostring(f.code) .. ":" .. f.first
    if codes[key] == nil then
      mem = mem or M.memory(tgid)
      if not mem then
        return
      end
      codes[key] = read_code(mem, py, tonumber(f.code), f.first)
    end
  end
  if mem then
    mem.close()
  end
end

--- Frames of a code object at an instruction: { name, file, line, col,
--- endcol }; name "[unknown python]" when its code object could not be
--- read.
function M.frame_of(code, instr)
  if not code then
    return { name = "[unknown python]", file = nil }
  end
  local line, col, endcol = M.line_of(code.linetable, code.first, instr)
  return { name = code.name, file = code.file, src = code.src, line = line or code.first, col = col, endcol = endcol }
end

--- The Python frames of stack id of process tgid, innermost first: each
--- { name, file, line, col, endcol, entry }, and whether the walk was cut
--- short; nil when there is no such stack.
function Reader:frames(tgid, id)
  if not id or id <= 0 or self.failed[tgid] then
    return nil
  end
  local st = self.stacks:get(id)
  if not st then
    return nil
  end
  local codes = self.codes[tgid] or {}
  local out = {}
  for i = 0, math.min(st.n, M.FRAMES) - 1 do
    local f = st.f[i]
    local instr = tonumber(f.instr)
    local entry = instr >= M.ENTRY
    local fr = M.frame_of(codes[tostring(f.code) .. ":" .. f.first] or nil, entry and instr - M.ENTRY or instr)
    fr.entry = entry
    out[#out + 1] = fr
  end
  return out, st.flags ~= 0
end

--- Counters of the walker (python.c's dn_py_stats): { walks, no_thread,
--- truncated, not_stored, frames, announcements_lost }.
function Reader:stats()
  local t = self.bpf:get_table("dn_py_stats")
  local out = {}
  for i, n in ipairs({ "walks", "no_thread", "truncated", "not_stored", "frames", "announcements_lost" }) do
    out[n] = tonumber(t:sum(i - 1))
  end
  return out
end

---------------------------------------------------------------------------
-- frames in stacks

--- A Python frame as a stack shows it: "napper (script.py:12)".
function M.label(fr)
  if not fr.file then
    return fr.name
  end
  return string.format("%s (%s:%d)", fr.name, util.basename(fr.file), fr.line or 0)
end

-- Is a Python file the standard library's (not the program's)?
local function is_stdlib(file)
  return file and (file:match("/lib/python3[%.%d]*/") and not file:match("%-packages/")
    or file:match("^<frozen ")) and true or false
end

local procs = {}

--- The CPython 3.11 process pid runs (detect()'s), found once; nil for
--- none or one whose frames cannot be read.
function M.of_process(pid)
  local py = procs[pid]
  if py == nil then
    py = M.detect(pid, require("denet.stacks.dwarf").proc_maps(pid)) or false
    procs[pid] = py
  end
  return py or nil
end

--- Put Python frames (innermost first, from frames()) into a native stack
--- uf (root first; mods, lines: each frame's in-the-program flag and
--- source line, updated alike): each run of Python frames (up to an
--- entry frame) in place of the _PyEval_EvalFrameDefault frame that ran
--- it, innermost run to innermost frame. Runs left over (the native walk
--- stopped short) go at the root. The program is its Python code: the C
--- frames (the interpreter's, an extension's) are not call sites.
--- Returns uf, mods, lines, and py (index -> the Python frame shown
--- there). cut: the Python frames were cut short (a read failed): the
--- outermost is marked "[truncated python]".
function M.merge(uf, mods, lines, pyframes, cut)
  local runs, run = {}, {}
  for _, fr in ipairs(pyframes) do
    run[#run + 1] = fr
    if fr.entry then
      runs[#runs + 1] = run
      run = {}
    end
  end
  if cut then
    run[#run + 1] = { name = "[truncated python]" }
  end
  if #run > 0 then
    runs[#runs + 1] = run
  end
  local evals = {}
  for i, f in ipairs(uf) do
    if f == M.EVAL then
      evals[#evals + 1] = i
    end
  end
  -- innermost run <-> innermost eval frame
  local at = {}
  for k = 1, math.min(#runs, #evals) do
    at[evals[#evals - k + 1]] = runs[k]
  end
  local out, omods, olines, py = {}, {}, {}, {}
  local function put(fr)
    out[#out + 1] = M.label(fr)
    omods[#out] = fr.file ~= nil and not is_stdlib(fr.file)
    olines[#out] = fr.file and (util.basename(fr.file) .. ":" .. (fr.line or 0)) or ""
    py[#out] = fr
  end
  local function put_run(r)
    for j = #r, 1, -1 do
      put(r[j])
    end
  end
  local lead = 0
  if uf[1] == "[truncated]" then
    out[1], omods[1], olines[1], lead = uf[1], mods[1], lines[1], 1
  end
  for k = #runs, #evals + 1, -1 do
    put_run(runs[k])
  end
  for i = lead + 1, #uf do
    if at[i] then
      put_run(at[i])
    else
      out[#out + 1] = uf[i]
      omods[#out] = false
      olines[#out] = lines[i]
    end
  end
  return out, omods, olines, py
end

local sources = {}

-- Line n of source file path (read once), or nil.
local function source_line(path, n)
  local lines = sources[path]
  if lines == nil then
    local text = path and core.read_file(path)
    lines = false
    if text then
      lines = {}
      for l in (text .. "\n"):gmatch("([^\n]*)\n") do
        lines[#lines + 1] = l
      end
    end
    sources[path] = lines
  end
  return lines and lines[n]
end

--- What a Python frame calls where it is (the callee's name in its
--- source: "time.sleep", "self.lock.acquire"), or nil when the source
--- cannot be read or the instruction is not a call.
function M.call_of(fr)
  local text = fr.src and fr.line and fr.col and source_line(fr.src, fr.line)
  if not text then
    return nil
  end
  local expr = text:sub(fr.col + 1)
  local callee = expr:match("^([%w_%.]+)%s*%(")
  return callee
end

--- The call site of a stack with Python frames (uf, mods, py: merge()'s):
--- "time.sleep() <- napper() (script.py:12)", from its innermost frame of
--- the program; nil when it has none.
function M.site(uf, mods, py)
  for i = #uf, 1, -1 do
    local fr = py[i]
    if mods[i] and fr then
      local callee = M.call_of(fr)
      if not callee and uf[i + 1] then
        callee = py[i + 1] and py[i + 1].name or uf[i + 1]
      end
      local here = string.format("%s() (%s:%d)", fr.name, util.basename(fr.file), fr.line or 0)
      return callee and (callee .. "() <- " .. here) or here
    end
  end
  return nil
end

---------------------------------------------------------------------------
-- a blocked thread, read through /proc/PID/mem

--- The Python frames of thread tid of process pid (a CPython 3.11 that
--- detect() accepted), innermost first, as frames() gives them, read now;
--- nil when the thread runs no Python code.
function M.walk(pid, tid, py)
  local mem = M.memory(pid)
  if not mem then
    return nil
  end
  local ts
  local interp = mem.u64(py.runtime + L.RT_INTERPS)
  local n = 0
  while interp and interp ~= 0 and not ts and n < 256 do
    local t = mem.u64(interp + L.IS_THREADS)
    while t and t ~= 0 and n < 256 do
      n = n + 1
      if mem.u64(t + L.TS_TID) == tid then
        ts = t
        break
      end
      t = mem.u64(t + L.TS_NEXT)
    end
    interp = mem.u64(interp + L.IS_NEXT)
  end
  local cf = ts and mem.u64(ts + L.TS_CFRAME)
  local f = cf and cf ~= 0 and mem.u64(cf + L.CF_FRAME)
  local out, cut, codes = {}, false, {}
  while f and f ~= 0 and #out < M.FRAMES do
    local code = mem.u64(f + L.F_CODE)
    local first = code and mem.s32(code + L.CO_FIRST)
    local c = first and (codes[code] or read_code(mem, py, code, first))
    local at, entry = mem.u64(f + L.F_INSTR), mem.read(f + L.F_ENTRY, 1)
    if not c or not at or not entry then
      cut = true
      break
    end
    codes[code] = c
    local instr = at >= code + L.CO_CODE and math.floor((at - code - L.CO_CODE) / 2) or 0
    local fr = M.frame_of(c, instr)
    fr.entry = entry:byte() ~= 0
    out[#out + 1] = fr
    f = mem.u64(f + L.F_PREVIOUS)
  end
  mem.close()
  if #out == 0 then
    return nil
  end
  return out, cut
end

return M
