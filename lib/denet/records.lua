-- denet.records: the records whose bytes C and Lua both read, declared
-- once in bpf-src/dn_records.h (BPF programs' events and iterator records,
-- tree.c's per-process counters, the host's /proc samples). The host hands
-- over the very declarations C compiled (core.records()); they are
-- declared here for the FFI, and each one's size is checked against C's.
--
--   local records = require("denet.records")
--   local ptr_t = records.ptr("dn_tree_event")   -- ffi.typeof("struct dn_tree_event *")
local ffi = require("ffi")
local core = require("denet.core")
require("denet.ctypes") -- the kernel's integer names (u32, s32, u64, ...)

local M = {}

M.LIST = core.records()
--- The array sizes of the records: DN_LEAF_FRAMES, DN_UT_FRAMES,
--- DN_KT_SLOTS, DN_KT_INNER, DN_KT_OUTER (bytes), DN_SNAP_KFRAMES.
M.const = core.record_constants()
local by_name = {}
for _, r in ipairs(M.LIST) do
  ffi.cdef(r.decl)
  local size = ffi.sizeof("struct " .. r.name)
  if size ~= r.size then
    error(string.format("struct %s: %d bytes to the FFI, %d to C (bpf-src/dn_records.h)", r.name, size, r.size))
  end
  by_name[r.name] = r
end

--- The FFI type of record `name` ("dn_tree_event"), and of a pointer to it.
function M.type(name)
  if not by_name[name] then
    error("denet.records: no record named '" .. tostring(name) .. "' (bpf-src/dn_records.h)", 2)
  end
  return ffi.typeof("struct " .. name)
end

function M.ptr(name)
  M.type(name)
  return ffi.typeof("struct " .. name .. " *")
end

--- The C name of a record's type, as open_ring_buffer's `type` takes it.
function M.cname(name)
  M.type(name)
  return "struct " .. name
end

return M
