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

return M
