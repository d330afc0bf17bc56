-- denet.ctypes: LuaJIT FFI types from libbcc's descriptions of BPF types.
--
-- libbcc describes every table's key and leaf as JSON: a C type name
-- ("unsigned int"), or [name, fields, "struct"|"union"|"struct_packed"]
-- where a field is [name, type], [name, type, [dims...]] (array) or
-- [name, type, bits] (bit-field). Records passed to perf_submit /
-- ringbuf_output are described as "name#type" strings. Both become C
-- declarations for ffi.typeof, checked against the size libbcc reports.
local ffi = require("ffi")
local cjson = require("cjson")

local M = {}

-- The kernel's integer names, as BPF C and libbcc's record fields use them.
pcall(ffi.cdef, [[
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;
typedef int8_t s8; typedef int16_t s16; typedef int32_t s32; typedef int64_t s64;
typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;
typedef int8_t __s8; typedef int16_t __s16; typedef int32_t __s32; typedef int64_t __s64;
]])

-- Every described type gets a typedef name, so arrays and pointers of it
-- are spelt as plain strings ("__dn_t3[1]", "__dn_t3 *") rather than with
-- ffi.typeof's "$" parameters, which some embeddings of LuaJIT 2.1 (busted's
-- runner among them) resolve to the wrong type after the first use.
local ntypes = 0
local function name_type(text)
  ntypes = ntypes + 1
  local tname = "__dn_t" .. ntypes
  local ok = pcall(ffi.cdef, "typedef " .. text .. " " .. tname .. ";")
  if not ok then
    return nil
  end
  return tname
end
M.name_type = name_type

-- C names clang prints that the FFI spells differently or lacks.
local RENAME = {
  ["_Bool"] = "bool",
  ["__int128"] = "int64_t __attribute__((aligned(16)))",
  ["unsigned __int128"] = "uint64_t __attribute__((aligned(16)))",
  ["long double"] = "double",
}
-- 128-bit integers become two 64-bit halves
local WIDE = { ["__int128"] = 2, ["unsigned __int128"] = 2 }

local decl -- forward

local function dims_suffix(dims)
  local s = {}
  for _, d in ipairs(dims) do
    s[#s + 1] = "[" .. tostring(d) .. "]"
  end
  return table.concat(s)
end

local function base_name(t)
  if type(t) == "string" then
    if t:match("^enum ") then
      return "int"
    end
    return RENAME[t] or t
  end
  return decl(t)
end

-- One field as C text.
local function field_decl(f)
  local name, ftype, extra = f[1], f[2], f[3]
  if type(ftype) == "string" and WIDE[ftype] then
    local dims = type(extra) == "table" and dims_suffix(extra) or ""
    return string.format("%s %s[2]%s;", ftype:match("unsigned") and "uint64_t" or "int64_t", name, dims)
  end
  if type(extra) == "table" then
    return string.format("%s %s%s;", base_name(ftype), name, dims_suffix(extra))
  elseif type(extra) == "number" then
    return string.format("%s %s : %d;", base_name(ftype), name, extra)
  elseif type(extra) == "string" then
    -- an anonymous (or named) nested struct/union given inline
    return string.format("%s %s;", decl(f), name)
  end
  return string.format("%s %s;", base_name(ftype), name)
end

-- C text of a described type.
function decl(d)
  if type(d) == "string" then
    return base_name(d)
  end
  local kind = d[3] or "struct"
  local packed = kind == "struct_packed"
  if packed then
    kind = "struct"
  end
  local parts = { kind, " " }
  if packed then
    parts[#parts + 1] = "__attribute__((packed)) "
  end
  parts[#parts + 1] = "{ "
  for _, f in ipairs(d[2] or {}) do
    parts[#parts + 1] = field_decl(f)
    parts[#parts + 1] = " "
  end
  parts[#parts + 1] = "}"
  return table.concat(parts)
end

M.decl = decl

-- Integer scalar types read as Lua numbers (exact up to 32 bits).
local SMALL_INT = {
  ["char"] = true, ["signed char"] = true, ["unsigned char"] = true,
  ["short"] = true, ["unsigned short"] = true, ["int"] = true,
  ["unsigned int"] = true, ["_Bool"] = true,
}
local WIDE_INT = {
  ["long"] = true, ["unsigned long"] = true, ["long long"] = true,
  ["unsigned long long"] = true,
}

--- Describe a libbcc type description (JSON text) as
--- { ct = ctype, name = typedef name, size = bytes, scalar = "small"|"wide"|"float"|nil,
---   fields = { {name, kind}, ... } for structs, decl = C text }.
--- expected_size, when given, must match ffi.sizeof (a mismatch raises).
--- The fields of the struct types made here, by ctype id
--- (tonumber(ffi.typeof(v))): { {name, kind}, ... }; for printing.
M.field_names = {}

function M.from_desc(json, expected_size)
  local ok, d = pcall(cjson.decode, json)
  if not ok then
    d = json -- a bare type name is not JSON
  end
  if type(d) == "string" then
    d = d:gsub('^"(.*)"$', "%1")
  end
  local text = decl(d)
  local tname = name_type(text)
  if not tname then
    -- a type the FFI cannot express: fall back to opaque bytes
    text = string.format("uint8_t[%d]", expected_size or 0)
    tname = name_type(text)
    d = nil
  end
  local ct = ffi.typeof(tname)
  local t = { ct = ct, name = tname, size = ffi.sizeof(ct), decl = text }
  -- ring buffers describe no key or leaf (size 0)
  if expected_size and expected_size > 0 and t.size ~= expected_size then
    error(string.format("type %s is %d bytes in LuaJIT but %d in BPF", text, t.size, expected_size), 2)
  end
  if type(d) == "string" then
    if SMALL_INT[d] then
      t.scalar = "small"
    elseif WIDE_INT[d] then
      t.scalar = "wide"
    elseif d == "float" or d == "double" then
      t.scalar = "float"
    end
  elseif type(d) == "table" then
    t.fields = {}
    M.field_names[tonumber(ct)] = t.fields
    for _, f in ipairs(d[2] or {}) do
      local fname, ftype, extra = f[1], f[2], f[3]
      if type(ftype) == "string" and extra == nil and fname ~= "" then
        local kind = SMALL_INT[ftype] and "small" or WIDE_INT[ftype] and "wide" or nil
        t.fields[#t.fields + 1] = { name = fname, kind = kind }
      else
        t.fields[#t.fields + 1] = { name = fname }
      end
    end
  end
  return t
end

--- The type of records libbcc saw passed to perf_submit/ringbuf_output,
--- from its "name#type" field list; nil when there is none or the FFI
--- cannot express it.
function M.from_fields(fields)
  if not fields or #fields == 0 then
    return nil
  end
  local parts = { "struct { " }
  for _, f in ipairs(fields) do
    local name, ty = f:match("^(.-)#(.*)$")
    if not name then
      return nil
    end
    if ty:match("^enum ") then
      ty = "int"
    end
    local base, dims = ty:match("^(.-)%s*(%[[%d%]%[]+)$")
    if base then
      parts[#parts + 1] = string.format("%s %s%s; ", RENAME[base] or base, name, dims)
    else
      parts[#parts + 1] = string.format("%s %s; ", RENAME[ty] or ty, name)
    end
  end
  parts[#parts + 1] = "}"
  local text = table.concat(parts)
  local tname = name_type(text)
  if not tname then
    return nil
  end
  local ct = ffi.typeof(tname)
  return { ct = ct, name = tname, size = ffi.sizeof(ct), decl = text }
end

return M
