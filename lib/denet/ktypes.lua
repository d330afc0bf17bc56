-- denet.ktypes: kernel struct layouts that are true for the running
-- kernel, whatever headers are installed.
--
-- libbcc compiles BPF C against kernel headers; where those are for
-- another kernel (Debian's 6.1 headers under a 6.18 kernel), `prev->pid`
-- reads some other field. When the headers are not the running kernel's
-- and a program names kernel structs:
--
-- * transparent (the kernel has BTF): the kernel's own structs and unions
--   are written out as C from its BTF (denet.btf's c_header: every member
--   at its BTF offset), renamed with a prefix so they cannot clash with the
--   headers, and each `struct X` / `union X` the program names is compiled
--   as the renamed, BTF-true type. Offsets are then the running kernel's.
-- * otherwise: the layouts the headers give are checked against the BTF
--   before loading (a small probe compile of _Static_asserts for the
--   fields the program reads); a mismatch fails with one line naming the
--   struct and the fix. Never silent garbage.
--
-- Structs of the BPF ABI (pt_regs, bpf_*, __sk_buff, ...) are the same
-- everywhere and left alone, as are structs the program defines itself.
local core = require("denet.core")
local errors = require("denet.errors")
local kernel = require("denet.kernel")

local M = {}

M.PREFIX = "__dn_k_"
-- a version of the generated header's format, part of its cache name
local GEN = 2

-- ABI structs: the same layout on every kernel, and named by libbcc's
-- own helpers and macros
local function is_abi(name)
  return name == "pt_regs" or name:match("^bpf_") or name:match("^__sk_buff$") or name:match("^xdp_md$")
    or name:match("^sk_msg_md$") or name:match("^sk_reuseport_md$") or name:match("^tracepoint__")
    or name:match("^dn_")
end

local headers_rel
--- The release the kernel headers libbcc uses were made for (from their
--- include/generated/utsrelease.h), or nil when unknown.
function M.headers_release()
  if headers_rel == nil then
    headers_rel = false
    local dir = require("denet.sys").kernel_headers()
    local s = dir and core.read_file(dir .. "/include/generated/utsrelease.h")
    headers_rel = s and s:match('UTS_RELEASE%s+"([^"]+)"') or false
  end
  return headers_rel or nil
end

--- Do the headers belong to another kernel than the running one?
function M.mismatch()
  local h = M.headers_release()
  return h ~= nil and h ~= core.uname().release
end

--- Can kernel types be taken from BTF here (BTF, not disabled)?
function M.transparent()
  return kernel.has("btf_types")
end

local header_path
--- The header of the running kernel's structs and unions, renamed and
--- laid out from its BTF (denet.btf's c_header), made once per kernel and
--- kept in the cache; nil and why when it cannot be made.
function M.header()
  if header_path then
    return header_path
  end
  local btf = require("denet.btf")
  local cache = require("denet.cache")
  local u = core.uname()
  local st = core.stat(btf.PATH)
  if not st then
    return nil, "the kernel has no BTF"
  end
  -- the kernel's identity: release, build (uname -v) and BTF size
  local h = 5381
  for i = 1, #u.version do
    h = (h * 33 + u.version:byte(i)) % 4294967296
  end
  local key = string.format("ktypes-%d-%s-%d-%08x.h", GEN, (u.release:gsub("[^%w%.%-]", "_")), st.size, h)
  local path, err = cache.path(key)
  if not path then
    return nil, err
  end
  if not core.stat(path) then
    local b, why = btf.load()
    if not b then
      return nil, why
    end
    local text = b:c_header(M.PREFIX)
    local ok, perr = cache.put(key, "/* the running kernel's types, from its BTF (denet.ktypes) */\n" .. text)
    if not ok then
      return nil, perr
    end
  end
  header_path = path
  return path
end

-- struct/union names the text names, and those it defines itself
-- (comments left out: "struct layout" in a comment names nothing)
local function named_structs(text)
  text = text:gsub("/%*.-%*/", " "):gsub("//[^\n]*", "")
  local named, defined = {}, {}
  for kw, name in text:gmatch("%f[%w_](%a+)%s+([%a_][%w_]*)") do
    if kw == "struct" or kw == "union" then
      named[name] = true
    end
  end
  for kw, name in text:gmatch("%f[%w_](%a+)%s+([%a_][%w_]*)%s*{") do
    if kw == "struct" or kw == "union" then
      defined[name] = true
    end
  end
  return named, defined
end

--- The kernel structs a program text names (not ABI, not its own): a
--- list of names known to the running kernel's BTF.
function M.kernel_structs(text)
  local named, defined = named_structs(text)
  local list, b = {}, nil
  for name in pairs(named) do
    if not defined[name] and not is_abi(name) then
      b = b or require("denet.btf").load()
      if not b then
        return {}
      end
      if b:struct_id(name) then
        list[#list + 1] = name
      end
    end
  end
  table.sort(list)
  return list
end

--- Make program text read kernel structs as the running kernel lays them
--- out. Returns the text and cflags to compile (unchanged when the headers
--- are the kernel's or no kernel struct is named). name: the program's,
--- for messages. Raises a user error when the headers disagree with the
--- kernel and the kernel's own types cannot be used.
function M.apply(text, cflags, name)
  if not text:find("struct", 1, true) and not text:find("union", 1, true) then
    return text, cflags
  end
  if not M.mismatch() or not kernel.has("btf") then
    return text, cflags
  end
  local structs = M.kernel_structs(text)
  if #structs == 0 then
    return text, cflags
  end
  if M.transparent() then
    local header = M.header()
    if header then
      for _, s in ipairs(structs) do
        text = text:gsub("(%f[%w_]struct%s+)" .. s .. "%f[^%w_]", "%1" .. M.PREFIX .. s)
          :gsub("(%f[%w_]union%s+)" .. s .. "%f[^%w_]", "%1" .. M.PREFIX .. s)
      end
      local out = { "-include", header }
      for _, f in ipairs(cflags) do
        out[#out + 1] = f
      end
      return text, out
    end
  end
  M.check(text, cflags, structs, name)
  return text, cflags
end

--- Compare the layouts the headers give the structs a program reads with
--- the kernel's BTF (a probe compile of _Static_asserts, with the
--- program's own #include and #define lines); raise the one-line user
--- error of the first mismatch.
function M.check(text, cflags, structs, name)
  local b = require("denet.btf").load()
  if not b then
    return
  end
  local fields = {}
  for f in text:gmatch("[%.>]%s*([%a_][%w_]*)") do
    fields[f] = true
  end
  local pre, asserts = {}, {}
  for l in text:gmatch("[^\n]+") do
    if l:match("^%s*#%s*include") or l:match("^%s*#%s*define") then
      pre[#pre + 1] = l
    end
  end
  local want = {}
  for _, s in ipairs(structs) do
    local id = b:struct_id(s)
    for _, m in ipairs(b:members(id)) do
      if fields[m.name] and m.bitfield == 0 and m.bits % 8 == 0 then
        local kw = select(1, b:type(id)) == require("denet.btf").KIND.UNION and "union" or "struct"
        asserts[#asserts + 1] = string.format('_Static_assert(__builtin_offsetof(%s %s, %s) == %d, '
          .. '"denet-ktypes:%s:%s:%d");', kw, s, m.name, m.bits / 8, s, m.name, m.bits / 8)
        want[s] = true
      end
    end
  end
  if #asserts == 0 then
    return
  end
  local probe = table.concat(pre, "\n") .. '\n#line 1 "denet-ktypes-check"\n' .. table.concat(asserts, "\n") .. "\n"
  local m, diag = core.bpf_compile(probe, false, cflags)
  if m then
    m:close()
    return
  end
  diag = diag or ""
  local s, f, off = diag:match('"denet%-ktypes:([%w_]+):([%w_]+):(%d+)"')
  if not s then
    f, s = diag:match("no member named '([%w_]+)' in '[%a]+ ([%w_]+)'")
  end
  if not s or not want[s] then
    return -- the headers do not define it (only pointers are used): nothing to compare
  end
  errors.raise(string.format("BPF program %s reads struct %s, whose layout in the installed kernel headers (%s) "
    .. "is not the running kernel's (%s): %s; fix: install the headers of the running kernel (or let denet take "
    .. "kernel types from BTF: unset DENET_DISABLE=btf_types)", name or "bpf.c", s, M.headers_release() or "?",
    core.uname().release, off and string.format("field %s is at byte %s in this kernel", f, off)
      or string.format("the headers have no field %s", f)))
end

--- Compare a few fields of kernel structs between the installed headers
--- and the running kernel's BTF (for `denet doctor`). fields: list of
--- { struct, field }; includes: header lines. Returns a list of
--- mismatches ("task_struct.pid: byte 1264 in the kernel"), or nil and
--- why the comparison could not be made.
function M.compare(fields, includes)
  local b, why = require("denet.btf").load()
  if not b then
    return nil, why
  end
  local asserts = {}
  for _, f in ipairs(fields) do
    local off = b:offset(f[1], f[2])
    if off then
      asserts[#asserts + 1] = string.format('_Static_assert(__builtin_offsetof(struct %s, %s) == %d, '
        .. '"denet-ktypes:%s:%s:%d");', f[1], f[2], off, f[1], f[2], off)
    end
  end
  local probe = table.concat(includes, "\n") .. '\n#line 1 "denet-ktypes-check"\n' .. table.concat(asserts, "\n")
    .. "\n"
  local m, diag = core.bpf_compile(probe, false, {})
  if m then
    m:close()
    return {}
  end
  local out, seen = {}, {}
  local function add(line)
    if not seen[line] then
      seen[line] = true
      out[#out + 1] = line
    end
  end
  for st, f, off in (diag or ""):gmatch('"denet%-ktypes:([%w_]+):([%w_]+):(%d+)"') do
    add(string.format("%s.%s at byte %s in the kernel", st, f, off))
  end
  for f, st in (diag or ""):gmatch("no member named '([%w_]+)' in 'struct ([%w_]+)'") do
    add(string.format("%s.%s: not in the headers", st, f))
  end
  if #out == 0 then
    return nil, (diag or ""):match("error: [^\n]+") or "the comparison did not compile"
  end
  return out
end

return M
