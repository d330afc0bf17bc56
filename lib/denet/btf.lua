-- denet.btf: the running kernel's own types, read from its BTF
-- (/sys/kernel/btf/vmlinux), for what headers cannot be trusted with:
-- field offsets of kernel structs (principle 2: BPF C takes them as -D
-- constants), and checks of the installed headers against the kernel.
--
--   local btf = require("denet.btf").load()     -- nil, why without BTF
--   btf:offset("task_struct", "flags")          -- bytes, or nil
--   btf:offset("task_struct", "real_parent")
--
-- The format (Documentation/bpf/btf.rst): a header, then the type
-- section (each type a 12-byte btf_type and trailing data whose size
-- depends on its kind), then the string section.
local ffi = require("ffi")
local bit = require("bit")
local core = require("denet.core")

local M = {}

M.PATH = "/sys/kernel/btf/vmlinux"

local KIND = { INT = 1, PTR = 2, ARRAY = 3, STRUCT = 4, UNION = 5, ENUM = 6, FWD = 7, TYPEDEF = 8,
  VOLATILE = 9, CONST = 10, RESTRICT = 11, FUNC = 12, FUNC_PROTO = 13, VAR = 14, DATASEC = 15, FLOAT = 16,
  DECL_TAG = 17, TYPE_TAG = 18, ENUM64 = 19 }
M.KIND = KIND

-- bytes after the 12-byte btf_type, per kind (vlen: its member count)
local function extra(kind, vlen)
  if kind == KIND.INT or kind == KIND.VAR or kind == KIND.DECL_TAG then
    return 4
  elseif kind == KIND.ARRAY then
    return 12
  elseif kind == KIND.STRUCT or kind == KIND.UNION or kind == KIND.DATASEC or kind == KIND.ENUM64 then
    return 12 * vlen
  elseif kind == KIND.ENUM or kind == KIND.FUNC_PROTO then
    return 8 * vlen
  end
  return 0
end

local Btf = {}
Btf.__index = Btf

local u32p = ffi.typeof("const uint32_t *")

--- Parse BTF bytes (a string). Returns the object, or nil and why.
function M.parse(data)
  if #data < 24 then
    return nil, "BTF too short"
  end
  local p = ffi.cast("const uint8_t *", data)
  local magic = ffi.cast("const uint16_t *", p)[0]
  if magic ~= 0xeb9f then
    return nil, "not BTF (bad magic)"
  end
  local h = ffi.cast(u32p, p + 4)
  local hdr_len, type_off, type_len, str_off = h[0], h[1], h[2], h[3]
  local self = setmetatable({ data = data, p = p, types = hdr_len + type_off, strs = hdr_len + str_off,
    off = {}, n = 0 }, Btf)
  -- one pass: where each type id starts
  local at, stop, id = self.types, self.types + type_len, 0
  local off = self.off
  while at < stop do
    id = id + 1
    off[id] = at
    local info = ffi.cast(u32p, p + at)[1]
    local kind, vlen = bit.band(bit.rshift(info, 24), 0x1f), bit.band(info, 0xffff)
    at = at + 12 + extra(kind, vlen)
  end
  self.n = id
  return self
end

-- Facts about the running kernel's types, remembered in the cache per
-- kernel (a small text file of NAME=VALUE lines) so that later runs need
-- not parse the BTF: compute() gives the number, or nil.
local function remember(what, compute)
  local cache = require("denet.cache")
  local u = core.uname()
  local id = core.file_identity(M.PATH, 0)
  if not id then
    return nil
  end
  local name = string.format("btf-facts-%s-%s.txt", core.hash(u.release .. "\0" .. u.version .. "\0" .. id),
    (u.release:gsub("[^%w%.%-]", "_")))
  local file = cache.path(name)
  local known = file and core.read_file(file) or ""
  local v = known:match("\n" .. what:gsub("%p", "%%%0") .. "=(%-?%d+)\n")
  if v then
    return tonumber(v) >= 0 and tonumber(v) or nil
  end
  local n = compute()
  if file then
    cache.put(name, (known == "" and "\n" or known) .. what .. "=" .. (n or -1) .. "\n")
  end
  return n
end

--- The byte offset of member `path` of struct `sname` in the running
--- kernel (Btf:offset), remembered per kernel; nil when unknown.
function M.offset_of(sname, path)
  return remember(sname .. "." .. path, function()
    local b = M.load()
    return b and b:offset(sname, path)
  end)
end

--- How many arguments raw tracepoint `tp` passes its programs (from the
--- kernel's btf_trace_TP prototype), remembered per kernel; nil when the
--- BTF does not say.
function M.raw_tp_nargs(tp)
  return remember("raw_tp." .. tp, function()
    local b = M.load()
    local id = b and b:typedef_id("btf_trace_" .. tp)
    if not id then
      return nil
    end
    local _, _, ref = b:type(id)
    local kind, _, proto = b:type(ref)
    if kind ~= KIND.PTR then
      return nil
    end
    local pkind, _, _, vlen = b:type(proto)
    -- the first parameter is the probe's own data pointer
    return pkind == KIND.FUNC_PROTO and vlen - 1 or nil
  end)
end

local loaded
--- The running kernel's BTF, parsed once; nil and why when it has none.
function M.load()
  if loaded then
    return loaded
  end
  local data = core.read_file(M.PATH, 256 * 1048576)
  if not data then
    return nil, M.PATH .. " is missing (a kernel built without CONFIG_DEBUG_INFO_BTF)"
  end
  local b, err = M.parse(data)
  loaded = b
  return b, err
end

function Btf:str(off)
  return ffi.string(self.p + self.strs + off)
end

--- kind, name, size-or-type, vlen, kind_flag of type id
function Btf:type(id)
  local t = ffi.cast(u32p, self.p + self.off[id])
  local info = t[1]
  return bit.band(bit.rshift(info, 24), 0x1f), self:str(t[0]), t[2], bit.band(info, 0xffff),
    bit.rshift(info, 31) == 1
end

-- id of the type id refers to, through typedefs and qualifiers
function Btf:resolve(id)
  while id ~= 0 do
    local kind, _, ref = self:type(id)
    if kind == KIND.TYPEDEF or kind == KIND.CONST or kind == KIND.VOLATILE or kind == KIND.RESTRICT
        or kind == KIND.TYPE_TAG then
      id = ref
    else
      return id
    end
  end
  return id
end

--- The id of typedef `name`, nil when there is none.
function Btf:typedef_id(name)
  if not self.typedefs then
    self.typedefs = {}
    for id = 1, self.n do
      local t = ffi.cast(u32p, self.p + self.off[id])
      if bit.band(bit.rshift(t[1], 24), 0x1f) == KIND.TYPEDEF and t[0] ~= 0 then
        self.typedefs[self:str(t[0])] = id
      end
    end
  end
  return self.typedefs[name]
end

--- The id of struct (or union) `name`, nil when there is none.
function Btf:struct_id(name)
  if not self.by_name then
    self.by_name = {}
    for id = 1, self.n do
      local t = ffi.cast(u32p, self.p + self.off[id])
      local kind = bit.band(bit.rshift(t[1], 24), 0x1f)
      if (kind == KIND.STRUCT or kind == KIND.UNION) and t[0] ~= 0 then
        local nm = self:str(t[0])
        -- the first definition with members wins over empty ones
        if not self.by_name[nm] or bit.band(t[1], 0xffff) > 0 then
          self.by_name[nm] = self.by_name[nm] and bit.band(t[1], 0xffff) == 0 and self.by_name[nm] or id
        end
      end
    end
  end
  return self.by_name[name]
end

--- The members of struct id: { name, bits (offset in bits), type, bitfield }
--- with the members of anonymous structs and unions lifted into it (as C
--- lets them be named), offsets from the start of id.
function Btf:members(id, base, out)
  out, base = out or {}, base or 0
  local kind, _, _, vlen, kflag = self:type(id)
  if kind ~= KIND.STRUCT and kind ~= KIND.UNION then
    return out
  end
  local m = ffi.cast(u32p, self.p + self.off[id] + 12)
  for i = 0, vlen - 1 do
    local name_off, tid, o = m[3 * i], m[3 * i + 1], m[3 * i + 2]
    local bits = kflag and bit.band(o, 0xffffff) or o
    local size = kflag and bit.rshift(o, 24) or 0
    if name_off == 0 then
      self:members(self:resolve(tid), base + bits, out)
    else
      out[#out + 1] = { name = self:str(name_off), bits = base + bits, type = tid, bitfield = size }
    end
  end
  return out
end

--- The byte offset of field `path` ("pid", "signal.nr_threads" within
--- embedded structs) in struct `sname`, and its type id; nil when the
--- kernel's struct has no such field (or it is a bit field).
function Btf:offset(sname, path)
  local id = self:struct_id(sname)
  if not id then
    return nil
  end
  local total = 0
  for part in path:gmatch("[^%.]+") do
    local found
    for _, m in ipairs(self:members(id)) do
      if m.name == part then
        found = m
        break
      end
    end
    if not found or found.bitfield ~= 0 or found.bits % 8 ~= 0 then
      return nil
    end
    total = total + found.bits / 8
    id = self:resolve(found.type)
  end
  return total, id
end

---------------------------------------------------------------------------
-- C declarations of the kernel's types

-- An integer C type of `size` bytes.
local function int_type(size, signed)
  local t = ({ [1] = "char", [2] = "short", [4] = "int", [8] = "long long" })[size]
  if not t then
    return nil
  end
  return (signed and "signed " or "unsigned ") .. t
end

-- A header being written from the BTF of b: each struct and union emitted
-- once, under its tag (prefix .. name), before what embeds it by value.
local Header = {}
Header.__index = Header

local function new_header(b, prefix)
  return setmetatable({
    b = b, prefix = prefix, out = {}, done = {}, busy = {},
    tagname = {}, -- struct/union id -> emitted tag
    used = {},    -- emitted tag -> id
    wanted = {},  -- typedef'd anonymous types named through a pointer
    -- padding members are named apart across the whole header: those of
    -- an anonymous member land in the scope of the struct around it
    npad = 0,
  }, Header)
end

-- The tag a struct or union (or a typedef'd anonymous one) is emitted as.
function Header:tag_of(id, via_typedef)
  if self.tagname[id] then
    return self.tagname[id]
  end
  local b = self.b
  local _, name = b:type(id)
  local base = name ~= "" and name or ("t_" .. via_typedef)
  local tag = self.prefix .. base
  if (name ~= "" and b:struct_id(name) ~= id) or (self.used[tag] and self.used[tag] ~= id) then
    tag = tag .. "___" .. id -- another type of the same name: struct_id's keeps the name
  end
  self.used[tag] = id
  self.tagname[id] = tag
  return tag
end

-- The 32-bit words after type id's btf_type.
function Header:words(id)
  return ffi.cast(u32p, self.b.p + self.b.off[id] + 12)
end

-- "TYPE DECLARATOR" of a number type id (int, enum, float) around inner.
function Header:number_decl(id, kind, size, inner)
  if kind == KIND.INT then
    local t = self:words(id)[0]
    local enc, bits = bit.rshift(bit.band(t, 0x0f000000), 24), bit.band(t, 0xff)
    local ct = int_type(size, bit.band(enc, 1) == 1)
    if not ct or bits ~= size * 8 then
      return string.format("unsigned char %s[%d]", inner, size)
    end
    return ct .. " " .. inner
  elseif kind == KIND.FLOAT then
    local ft = ({ [4] = "float", [8] = "double" })[size]
    return ft and (ft .. " " .. inner) or string.format("unsigned char %s[%d]", inner, size)
  end
  return (int_type(size, false) or "unsigned int") .. " " .. inner -- an enum
end

-- "TYPE DECLARATOR" of struct or union id around inner: an anonymous one
-- inline, a named one by its tag (defined first when embedded by value).
function Header:struct_decl(id, kind, name, inner, typedef_name)
  if name == "" and not typedef_name then
    -- an anonymous member type: its own packed body, inline
    return self:emit_struct(id, nil) .. " " .. inner
  end
  local tag = self:tag_of(id, typedef_name)
  if inner:sub(1, 1) ~= "*" and inner:sub(1, 2) ~= "(*" then
    self:emit_struct(id, tag) -- embedded by value: defined first
  elseif name == "" then
    self.wanted[id] = tag
  end
  return (kind == KIND.UNION and "union " or "struct ") .. tag .. " " .. inner
end

local QUALIFIER = { [KIND.CONST] = true, [KIND.VOLATILE] = true, [KIND.RESTRICT] = true, [KIND.TYPE_TAG] = true }

-- "TYPE DECLARATOR" for type id around declarator inner.
function Header:decl(id, inner, typedef_name)
  if id == 0 then
    return "void " .. inner
  end
  local b = self.b
  local kind, name, ref = b:type(id)
  if kind == KIND.INT or kind == KIND.ENUM or kind == KIND.ENUM64 or kind == KIND.FLOAT then
    return self:number_decl(id, kind, ref, inner)
  elseif kind == KIND.PTR then
    local target = b:resolve(ref)
    if target ~= 0 and select(1, b:type(target)) == KIND.FUNC_PROTO then
      return "void *" .. inner
    end
    return self:decl(ref, "*" .. inner, nil)
  elseif kind == KIND.ARRAY then
    local a = self:words(id)
    if inner:sub(1, 1) == "*" then
      inner = "(" .. inner .. ")"
    end
    return self:decl(a[0], string.format("%s[%d]", inner, a[2]), nil)
  elseif kind == KIND.TYPEDEF then
    local target = b:resolve(ref)
    local tk, tname = b:type(target)
    if (tk == KIND.STRUCT or tk == KIND.UNION) and tname == "" then
      return self:decl(target, inner, name)
    end
    return self:decl(ref, inner, nil)
  elseif QUALIFIER[kind] then
    return self:decl(ref, inner, typedef_name)
  elseif kind == KIND.STRUCT or kind == KIND.UNION then
    return self:struct_decl(id, kind, name, inner, typedef_name)
  elseif kind == KIND.FWD then
    local _, _, _, _, is_union = b:type(id)
    return (is_union and "union " or "struct ") .. self.prefix .. name .. " " .. inner
  end
  return "void " .. inner -- function prototypes, and what else has no layout
end

-- The bytes type t takes: from BTF (arrays, structs and all).
function Header:size_of(t)
  local b = self.b
  local k, _, s = b:type(t)
  if k == KIND.INT or k == KIND.ENUM or k == KIND.ENUM64 or k == KIND.FLOAT or k == KIND.STRUCT
      or k == KIND.UNION then
    return s
  elseif k == KIND.PTR then
    return 8
  elseif k == KIND.ARRAY then
    local a = self:words(t)
    return self:size_of(b:resolve(a[0])) * a[2]
  elseif k == KIND.TYPEDEF or QUALIFIER[k] then
    return self:size_of(b:resolve(t))
  end
  return 0
end

-- Padding members from bit pos up to bit `bits` into lines; the new pos.
function Header:pad(lines, pos, bits)
  if pos >= bits then
    return pos
  end
  if pos % 8 ~= 0 then
    local n = math.min(8 - pos % 8, bits - pos)
    self.npad = self.npad + 1
    lines[#lines + 1] = string.format("unsigned char :%d;", n)
    pos = pos + n
  end
  local bytes = math.floor((bits - pos) / 8)
  if bytes > 0 then
    self.npad = self.npad + 1
    lines[#lines + 1] = string.format("unsigned char __dn_pad%d[%d];", self.npad, bytes)
    pos = pos + bytes * 8
  end
  if pos < bits then
    self.npad = self.npad + 1
    lines[#lines + 1] = string.format("unsigned char :%d;", bits - pos)
    pos = bits
  end
  return pos
end

-- Member i of struct id (its words m) into lines, after bit pos; the bit
-- where it ends.
function Header:member(lines, m, i, kflag, pos)
  local b = self.b
  local name_off, tid, o = m[3 * i], m[3 * i + 1], m[3 * i + 2]
  local bits = kflag and bit.band(o, 0xffffff) or o
  local width = kflag and bit.rshift(o, 24) or 0
  local mname = name_off ~= 0 and b:str(name_off) or ""
  local rid = b:resolve(tid)
  local rkind, _, rsize = b:type(rid)
  if width == 0 and rkind == KIND.INT and not kflag then
    -- an old-style bit field: the width is in the int type itself
    local ibits = bit.band(self:words(rid)[0], 0xff)
    if ibits ~= rsize * 8 then
      width = ibits
    end
  end
  pos = self:pad(lines, pos, bits)
  if width > 0 then
    lines[#lines + 1] = string.format("%s %s:%d;", int_type(rsize, false) or "unsigned int", mname, width)
    return bits + width
  end
  if pos % 8 ~= 0 then
    self:pad(lines, pos, pos + 8 - pos % 8)
  end
  lines[#lines + 1] = self:decl(tid, mname) .. ";"
  return bits + self:size_of(rid) * 8
end

-- Emit struct/union id: with a tag, its definition goes to the header
-- (once) and the tag is returned; without, the body is returned (inline).
function Header:emit_struct(id, tag)
  if tag and (self.done[id] or self.busy[id]) then
    return tag
  end
  if tag then
    self.busy[id] = true
  end
  local kind, _, size, vlen, kflag = self.b:type(id)
  local is_union = kind == KIND.UNION
  local lines, pos = {}, 0 -- bits placed so far
  local m = self:words(id)
  for i = 0, vlen - 1 do
    pos = self:member(lines, m, i, kflag, is_union and 0 or pos)
  end
  if is_union then
    -- its size, whatever its members
    self.npad = self.npad + 1
    lines[#lines + 1] = string.format("unsigned char __dn_pad%d[%d];", self.npad, size)
  else
    self:pad(lines, pos, size * 8)
  end
  local body = string.format("%s {\n\t%s\n} __attribute__((packed))", is_union and "union" or "struct",
    table.concat(lines, "\n\t"))
  if not tag then
    return body
  end
  self.out[#self.out + 1] = body:gsub("^(%a+) ", "%1 " .. tag .. " ", 1) .. ";\n"
  self.busy[id] = nil
  self.done[id] = true
  return tag
end

--- Every struct and union of the kernel as C, each tag and typedef'd
--- anonymous type renamed with `prefix` so the result can sit beside any
--- kernel headers. Layouts are spelled out, not left to the compiler: each
--- struct is packed, every member at its BTF offset with explicit padding
--- before it and to the struct's BTF size, so the offsets are the running
--- kernel's under any target's rules (clang lays out the unnamed bit-field
--- padding of a plain C dump differently for the BPF target than the
--- kernel's compiler did). Members keep their names; typedefs are replaced
--- by what they name; enums are integers of their size; function pointers
--- are void pointers. Returns the text and the tags (struct id -> tag).
function Btf:c_header(prefix)
  local h = new_header(self, prefix)
  for id = 1, self.n do
    local kind, name = self:type(id)
    if (kind == KIND.STRUCT or kind == KIND.UNION) and name ~= "" then
      h:emit_struct(id, h:tag_of(id))
    end
  end
  repeat
    local more = false
    for id, tag in pairs(h.wanted) do
      if not h.done[id] then
        h:emit_struct(id, tag)
        more = true
      end
    end
  until not more
  return table.concat(h.out, "\n"), h.tagname
end

return M
