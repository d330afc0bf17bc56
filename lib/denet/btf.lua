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

--- Every struct and union of the kernel as C, each tag and typedef'd
--- anonymous type renamed with `prefix` so the result can sit beside any
--- kernel headers. Layouts are spelled out, not left to the compiler: each
--- struct is packed, every member at its BTF offset with explicit padding
--- before it and to the struct's BTF size, so the offsets are the running
--- kernel's under any target's rules (clang lays out the unnamed bit-field
--- padding of a plain C dump differently for the BPF target than the
--- kernel's compiler did). Members keep their names; typedefs are replaced
--- by what they name; enums are integers of their size; function pointers
--- are void pointers.
function Btf:c_header(prefix)
  local out, done, busy = {}, {}, {}
  local tagname = {}   -- struct/union id -> emitted tag
  local used = {}      -- emitted tag -> id
  local wanted = {}    -- typedef'd anonymous types named through a pointer
  -- padding members are named apart across the whole header: those of an
  -- anonymous member land in the scope of the struct around it
  local npad = 0
  local emit_struct

  -- the tag a struct or union (or a typedef'd anonymous one) is emitted as
  local function tag_of(id, via_typedef)
    if tagname[id] then
      return tagname[id]
    end
    local _, name = self:type(id)
    local base = name ~= "" and name or ("t_" .. via_typedef)
    local tag = prefix .. base
    if (name ~= "" and self:struct_id(name) ~= id) or (used[tag] and used[tag] ~= id) then
      tag = tag .. "___" .. id -- another type of the same name: struct_id's keeps the name
    end
    used[tag] = id
    tagname[id] = tag
    return tag
  end

  -- "TYPE DECLARATOR" for type id around declarator inner; value: the
  -- struct it embeds by value must be emitted first
  local decl
  decl = function(id, inner, typedef_name)
    if id == 0 then
      return "void " .. inner
    end
    local kind, name, ref = self:type(id)
    if kind == KIND.INT then
      local t = ffi.cast(u32p, self.p + self.off[id] + 12)[0]
      local enc, bits = bit.rshift(bit.band(t, 0x0f000000), 24), bit.band(t, 0xff)
      local ct = int_type(ref, bit.band(enc, 1) == 1)
      if not ct or bits ~= ref * 8 then
        return string.format("unsigned char %s[%d]", inner, ref)
      end
      return ct .. " " .. inner
    elseif kind == KIND.ENUM or kind == KIND.ENUM64 then
      return (int_type(ref, false) or "unsigned int") .. " " .. inner
    elseif kind == KIND.FLOAT then
      local ft = ({ [4] = "float", [8] = "double" })[ref]
      return ft and (ft .. " " .. inner) or string.format("unsigned char %s[%d]", inner, ref)
    elseif kind == KIND.PTR then
      local target = self:resolve(ref)
      local tk = target ~= 0 and select(1, self:type(target))
      if tk == KIND.FUNC_PROTO then
        return "void *" .. inner
      end
      return decl(ref, "*" .. inner, nil)
    elseif kind == KIND.ARRAY then
      local a = ffi.cast(u32p, self.p + self.off[id] + 12)
      local elem, n = a[0], a[2]
      if inner:sub(1, 1) == "*" then
        inner = "(" .. inner .. ")"
      end
      return decl(elem, string.format("%s[%d]", inner, n), nil)
    elseif kind == KIND.TYPEDEF then
      local target = self:resolve(ref)
      local tk, tname = self:type(target)
      if (tk == KIND.STRUCT or tk == KIND.UNION) and tname == "" then
        return decl(target, inner, name)
      end
      return decl(ref, inner, nil)
    elseif kind == KIND.CONST or kind == KIND.VOLATILE or kind == KIND.RESTRICT or kind == KIND.TYPE_TAG then
      return decl(ref, inner, typedef_name)
    elseif kind == KIND.STRUCT or kind == KIND.UNION then
      if name == "" and not typedef_name then
        -- an anonymous member type: its own packed body, inline
        return emit_struct(id, nil) .. " " .. inner
      end
      local tag = tag_of(id, typedef_name)
      if inner:sub(1, 1) ~= "*" and inner:sub(1, 2) ~= "(*" then
        emit_struct(id, tag) -- embedded by value: defined first
      elseif name == "" then
        wanted[id] = tag
      end
      return (kind == KIND.UNION and "union " or "struct ") .. tag .. " " .. inner
    elseif kind == KIND.FWD then
      local _, _, _, _, is_union = self:type(id)
      return (is_union and "union " or "struct ") .. prefix .. name .. " " .. inner
    elseif kind == KIND.FUNC_PROTO then
      return "void " .. inner
    end
    return "void " .. inner
  end

  -- Emit struct/union id: with a tag, its definition goes to `out` (once)
  -- and the tag is returned; without, the body is returned (inline use).
  emit_struct = function(id, tag)
    if tag and (done[id] or busy[id]) then
      return tag
    end
    if tag then
      busy[id] = true
    end
    local kind, _, size, vlen, kflag = self:type(id)
    local is_union = kind == KIND.UNION
    local lines = {}
    local m = ffi.cast(u32p, self.p + self.off[id] + 12)
    local pos = 0 -- bits placed so far
    local function pad_to(bits)
      if pos >= bits then
        return
      end
      if pos % 8 ~= 0 then
        local b = math.min(8 - pos % 8, bits - pos)
        npad = npad + 1
        lines[#lines + 1] = string.format("unsigned char :%d;", b)
        pos = pos + b
      end
      local bytes = math.floor((bits - pos) / 8)
      if bytes > 0 then
        npad = npad + 1
        lines[#lines + 1] = string.format("unsigned char __dn_pad%d[%d];", npad, bytes)
        pos = pos + bytes * 8
      end
      if pos < bits then
        npad = npad + 1
        lines[#lines + 1] = string.format("unsigned char :%d;", bits - pos)
        pos = bits
      end
    end
    for i = 0, vlen - 1 do
      local name_off, tid, o = m[3 * i], m[3 * i + 1], m[3 * i + 2]
      local bits = kflag and bit.band(o, 0xffffff) or o
      local width = kflag and bit.rshift(o, 24) or 0
      local mname = name_off ~= 0 and self:str(name_off) or ""
      local rid = self:resolve(tid)
      local rkind, _, rsize = self:type(rid)
      if width == 0 and (rkind == KIND.INT or rkind == KIND.ENUM) and not kflag then
        -- an old-style bit field: the width is in the int type itself
        if rkind == KIND.INT then
          local t = ffi.cast(u32p, self.p + self.off[rid] + 12)[0]
          local ibits = bit.band(t, 0xff)
          if ibits ~= rsize * 8 then
            width = ibits
          end
        end
      end
      if is_union then
        pos = 0
      end
      if width > 0 then
        pad_to(bits)
        local ct = int_type(rsize, false) or "unsigned int"
        lines[#lines + 1] = string.format("%s %s:%d;", ct, mname, width)
        pos = bits + width
      else
        pad_to(bits)
        if pos % 8 ~= 0 then
          pad_to(pos + 8 - pos % 8)
        end
        lines[#lines + 1] = decl(tid, mname) .. ";"
        -- the size it takes: from BTF (arrays, structs and all)
        local function size_of(t)
          local k, _, s = self:type(t)
          if k == KIND.INT or k == KIND.ENUM or k == KIND.ENUM64 or k == KIND.FLOAT or k == KIND.STRUCT
              or k == KIND.UNION then
            return s
          elseif k == KIND.PTR then
            return 8
          elseif k == KIND.ARRAY then
            local a = ffi.cast(u32p, self.p + self.off[t] + 12)
            return size_of(self:resolve(a[0])) * a[2]
          elseif k == KIND.TYPEDEF or k == KIND.CONST or k == KIND.VOLATILE or k == KIND.RESTRICT
              or k == KIND.TYPE_TAG then
            return size_of(self:resolve(t))
          end
          return 0
        end
        pos = bits + size_of(self:resolve(tid)) * 8
      end
    end
    if is_union then
      -- its size, whatever its members
      npad = npad + 1
      lines[#lines + 1] = string.format("unsigned char __dn_pad%d[%d];", npad, size)
    else
      pad_to(size * 8)
    end
    local body = string.format("%s {\n\t%s\n} __attribute__((packed))", is_union and "union" or "struct",
      table.concat(lines, "\n\t"))
    if not tag then
      return body
    end
    out[#out + 1] = body:gsub("^(%a+) ", "%1 " .. tag .. " ", 1) .. ";\n"
    busy[id] = nil
    done[id] = true
    return tag
  end

  for id = 1, self.n do
    local kind, name = self:type(id)
    if (kind == KIND.STRUCT or kind == KIND.UNION) and name ~= "" then
      emit_struct(id, tag_of(id))
    end
  end
  repeat
    local more = false
    for id, tag in pairs(wanted) do
      if not done[id] then
        emit_struct(id, tag)
        more = true
      end
    end
  until not more
  return table.concat(out, "\n"), tagname
end

return M
