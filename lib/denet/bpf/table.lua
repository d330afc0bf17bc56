-- denet.bpf.table: a BPF program's tables (maps) as Lua sees them: keys
-- and leaves typed as the program declared them (denet.ctypes, from
-- libbcc's descriptions), per-CPU leaves as lists, whole maps read in one
-- pass (core.map_dump), stack traces walked, and buffers opened on perf
-- event arrays and ring buffers (denet.bpf.buffer). The raw map calls
-- (M.raw) are what bcc's Lua binding (lib/bcc/table.lua) uses too.
local ffi = require("ffi")
local core = require("denet.core")
local ctypes = require("denet.ctypes")
local errors = require("denet.errors")
local sys = require("denet.sys")
local buffer = require("denet.bpf.buffer")

local M = {}

-- enum bpf_map_type
local MAP = {
  HASH = 1, ARRAY = 2, PROG_ARRAY = 3, PERF_EVENT_ARRAY = 4, PERCPU_HASH = 5,
  PERCPU_ARRAY = 6, STACK_TRACE = 7, CGROUP_ARRAY = 8, LRU_HASH = 9,
  LRU_PERCPU_HASH = 10, LPM_TRIE = 11, QUEUE = 22, STACK = 23, RINGBUF = 27,
  TASK_STORAGE = 29,
}
M.MAP = MAP

--- The map calls, on a map's fd and key/value buffers (what the host's
--- libbcc-checked functions take): lookup(fd, key, value) -> true | false
--- (absent) | nil, msg; update(fd, key, value, flags); delete(fd, key);
--- dump(fd, key_size, value_size, max) -> keys, values, n (packed);
--- clear(fd, key_size); perf_buffer(fd, cb, opts) and ring_buffer(fd,
--- cb) (denet.bpf.buffer).
M.raw = {
  lookup = core.map_lookup,
  update = core.map_update,
  delete = core.map_delete,
  dump = core.map_dump,
  clear = core.map_clear,
}

local Table = {}
Table.__index = Table

local PERCPU = { [MAP.PERCPU_HASH] = true, [MAP.PERCPU_ARRAY] = true, [MAP.LRU_PERCPU_HASH] = true }
local ARRAYS = { [MAP.ARRAY] = true, [MAP.PERCPU_ARRAY] = true, [MAP.PERF_EVENT_ARRAY] = true,
  [MAP.PROG_ARRAY] = true, [MAP.CGROUP_ARRAY] = true }

--- The table named `name` of program bpf (as declared with BPF_HASH,
--- BPF_ARRAY, ...), described by info (its module's table_info).
function M.new(bpf, name, info)
  local t = setmetatable({ bpf = bpf, name = name, info = info, fd = info.fd, type = info.type }, Table)
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

local PERFBUF_OPTS = { "type", "page_cnt", "lost_cb" }
local RINGBUF_OPTS = { "type" }

--- Perf event array tables (BPF_PERF_OUTPUT): call cb(record, size, cpu)
--- for each record, typed as the struct passed to perf_submit (raw bytes
--- when libbcc could not describe it). opts.page_cnt (default 64 pages per
--- CPU), opts.lost_cb(n, cpu), opts.type (an ffi type to use instead).
--- Records are only valid during the callback: copy what you keep.
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
  local ev = opts.type and { name = opts.type } or buffer.event_type(self.info.fields)
  local b, msg = buffer.open_perf(self, ev, cb, opts.page_cnt or 64, opts.lost_cb)
  if not b then
    errors.raise(msg)
  end
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
  local ev = opts.type and { name = opts.type } or buffer.event_type(self.info.fields)
  local b, msg = buffer.open_ring(self, ev, cb)
  if not b then
    errors.raise(msg)
  end
  self.bpf.buffers[self.name] = b
  return b
end


M.Table = Table
return M
