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
--- { ct = ctype, size = bytes, scalar = "small"|"wide"|"float"|nil,
---   fields = { {name, kind}, ... } for structs, decl = C text }.
--- expected_size, when given, must match ffi.sizeof (a mismatch raises).
function M.from_desc(json, expected_size)
  local ok, d = pcall(cjson.decode, json)
  if not ok then
    d = json -- a bare type name is not JSON
  end
  if type(d) == "string" then
    d = d:gsub('^"(.*)"$', "%1")
  end
  local text = decl(d)
  local ok2, ct = pcall(ffi.typeof, text)
  if not ok2 then
    -- a type the FFI cannot express: fall back to opaque bytes
    ct = ffi.typeof("uint8_t[$]", expected_size or 0)
    text = string.format("uint8_t[%d]", expected_size or 0)
    d = nil
  end
  local t = { ct = ct, size = ffi.sizeof(ct), decl = text }
  if expected_size and t.size ~= expected_size then
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
  local ok, ct = pcall(ffi.typeof, text)
  if not ok then
    return nil
  end
  return { ct = ct, size = ffi.sizeof(ct), decl = text }
end

return M
