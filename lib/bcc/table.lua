-- bcc.table: BPF tables with the methods and iteration of bcc's Lua
-- binding, over denet's tables and buffers (denet.bpf.table's map calls,
-- denet.bpf.buffer's perf buffers).
--
--   t:get(k), t:set(k, v), t:delete(k), t:keys(), t:items()
--   t:key_sprintf(k), t:leaf_sprintf(v), t:key_scanf(s), t:leaf_scanf(s)
--   t.c_key, t.c_leaf          -- ctypes of one-element key/leaf arrays
--
-- Keys and leaves are cdata of the table's C types (numbers for integers
-- up to 32 bits, uint64 cdata for 64-bit ones). Hash tables iterate as
-- (key, leaf); arrays as leaves only (items(true): 1-based index, leaf);
-- per-CPU tables give, per key, an array of leaves indexed by CPU number
-- (0-based) with :sum/:max/:average helpers on the table. Stack trace
-- tables walk stacks; perf event arrays open perf buffers whose callback
-- gets (cpu, event), event cast to the given C type.
local ffi = require("ffi")
local ctypes = require("denet.ctypes")
local errors = require("denet.errors")
local buffer = require("denet.bpf.buffer")
local maps = require("denet.bpf.table").raw -- the map calls denet's tables make
local sys = require("denet.sys")

local BaseTable = class("BaseTable")

BaseTable.static.BPF_MAP_TYPE_HASH = 1
BaseTable.static.BPF_MAP_TYPE_ARRAY = 2
BaseTable.static.BPF_MAP_TYPE_PROG_ARRAY = 3
BaseTable.static.BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BaseTable.static.BPF_MAP_TYPE_PERCPU_HASH = 5
BaseTable.static.BPF_MAP_TYPE_PERCPU_ARRAY = 6
BaseTable.static.BPF_MAP_TYPE_STACK_TRACE = 7
BaseTable.static.BPF_MAP_TYPE_CGROUP_ARRAY = 8
BaseTable.static.BPF_MAP_TYPE_LRU_HASH = 9
BaseTable.static.BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BaseTable.static.BPF_MAP_TYPE_LPM_TRIE = 11

-- Raise a string error naming the user's line (bcc raises strings).
local function fail(msg)
  local where = errors.where(2)
  error((where and (where .. ": ") or "") .. msg, 0)
end

-- A C type given as text, or described by libbcc (JSON), as
-- { ct, name (a typedef), size, aggregate }.
local function c_type(text, desc, size)
  local t
  if text then
    local name = ctypes.name_type(text)
    if not name then
      fail(string.format("cannot declare the C type '%s' for LuaJIT", text))
    end
    local ct = ffi.typeof(name)
    t = { ct = ct, name = name, size = ffi.sizeof(ct) }
  else
    t = ctypes.from_desc(desc, size)
  end
  local s = tostring(t.ct)
  t.aggregate = s:find("^ctype<struct") ~= nil or s:find("^ctype<union") ~= nil or s:find("%[%d*%]>$") ~= nil
  t.ptr = ffi.typeof(t.name .. " *")
  return t
end

-- The value at ptr (a pointer of t.ptr): a copy for aggregates (the
-- buffer it points into is temporary), the number or boxed scalar else.
local function value_at(t, ptr)
  if t.aggregate then
    local v = t.ct()
    ffi.copy(v, ptr, t.size)
    return v
  end
  return ptr[0]
end

function BaseTable:initialize(t_type, bpf, name, info, key_type, leaf_type)
  self.t_type = t_type
  self.bpf = bpf
  self.name = name
  self.map_id = name
  self.map_fd = info.fd
  self.info = info
  self.key_t = c_type(key_type, info.key_desc, info.key_size)
  self.leaf_t = c_type(leaf_type, info.leaf_desc, info.leaf_size)
  self.c_key = ffi.typeof(self.key_t.name .. "[1]")
  self.c_leaf = ffi.typeof(self.leaf_t.name .. "[1]")
  self.value_size = self.leaf_t.size
end

-- libbcc's text of a key or leaf buffer
function BaseTable:_print(which, buf)
  local s, msg = self.bpf._d.m:table_print(self.name, which, buf)
  if not s then
    fail(string.format("could not print %s: %s", which, msg))
  end
  return s
end

function BaseTable:key_sprintf(key)
  return self:_print("key", self.c_key(key))
end

function BaseTable:leaf_sprintf(leaf)
  return self:_print("leaf", self.c_leaf(leaf))
end

function BaseTable:_scan(which, text, ct)
  local buf = ct()
  local ok, msg = self.bpf._d.m:table_scan(self.name, which, text, buf)
  if not ok then
    fail(string.format("could not scanf %s: %s", which, msg))
  end
  return buf[0]
end

function BaseTable:key_scanf(text)
  return self:_scan("key", text, self.c_key)
end

function BaseTable:leaf_scanf(text)
  return self:_scan("leaf", text, self.c_leaf)
end

function BaseTable:_key(key)
  if type(key) == "cdata" and ffi.istype(self.c_key, key) then
    return key
  end
  return self.c_key(key)
end

function BaseTable:get(key)
  local pvalue = ffi.new("uint8_t[?]", self.value_size)
  local ok, msg = maps.lookup(self.map_fd, self:_key(key), pvalue)
  if ok == nil then
    fail(string.format("table %s: %s", self.name, msg))
  end
  if not ok then
    return nil
  end
  return self:_leaf(pvalue)
end

function BaseTable:_leaf(bytes)
  return value_at(self.leaf_t, ffi.cast(self.leaf_t.ptr, bytes))
end

function BaseTable:_leaf_buf(value)
  return self.c_leaf(value)
end

function BaseTable:set(key, value)
  local ok, msg = maps.update(self.map_fd, self:_key(key), self:_leaf_buf(value), 0)
  if not ok then
    fail(string.format("could not update table %s: %s", self.name, msg))
  end
end

-- One pass over the map: key bytes, value bytes, count.
function BaseTable:_dump()
  local keys, values, n = maps.dump(self.map_fd, self.info.key_size, self.value_size,
    math.max(self.info.max_entries, 1) * 2)
  if not keys then
    fail(string.format("table %s: %s", self.name, values))
  end
  return keys, values, n
end

--- Iterate over the keys present now.
function BaseTable:keys()
  local keys, _, n = self:_dump()
  local base = ffi.cast("const uint8_t *", keys)
  local i = -1
  return function()
    local _ = keys -- the pointers point into it: alive while iterating
    i = i + 1
    if i >= n then
      return nil
    end
    return value_at(self.key_t, ffi.cast(self.key_t.ptr, base + i * self.info.key_size))
  end
end

--- Iterate over (key, leaf) of the entries present now.
function BaseTable:items()
  local keys, values, n = self:_dump()
  local kbase = ffi.cast("const uint8_t *", keys)
  local vbase = ffi.cast("const uint8_t *", values)
  local i = -1
  return function()
    local _, _ = keys, values -- the pointers point into them: alive while iterating
    i = i + 1
    if i >= n then
      return nil
    end
    return value_at(self.key_t, ffi.cast(self.key_t.ptr, kbase + i * self.info.key_size)),
      self:_leaf(vbase + i * self.value_size)
  end
end

--- Number of entries present now.
function BaseTable:size()
  local _, _, n = self:_dump()
  return n
end

---------------------------------------------------------------------------

local HashTable = class("HashTable", BaseTable)

function HashTable:initialize(bpf, name, info, key_type, leaf_type)
  BaseTable.initialize(self, info.type, bpf, name, info, key_type, leaf_type)
end

--- Remove key; true if it was there.
function HashTable:delete(key)
  local ok, msg = maps.delete(self.map_fd, self:_key(key))
  if ok == nil then
    fail(string.format("table %s: %s", self.name, msg))
  end
  return ok
end

--- Remove every entry.
function HashTable:clear()
  local ok, msg = maps.clear(self.map_fd, self.info.key_size)
  if not ok then
    fail(string.format("table %s: %s", self.name, msg))
  end
end

---------------------------------------------------------------------------

local BaseArray = class("BaseArray", BaseTable)

function BaseArray:initialize(t_type, bpf, name, info, key_type, leaf_type)
  BaseTable.initialize(self, t_type, bpf, name, info, key_type, leaf_type)
  self.max_entries = info.max_entries
end

-- Negative indexes count from the end, as in bcc.
function BaseArray:_normalize_key(key)
  if type(key) ~= "number" then
    fail(string.format("table %s: invalid key (expected a number, got a %s)", self.name, type(key)))
  end
  if key < 0 then
    key = self.max_entries + key
  end
  if key < 0 or key >= self.max_entries then
    fail(string.format("table %s: index out of range (%d, %d entries)", self.name, key, self.max_entries))
  end
  return key
end

function BaseArray:get(key)
  return BaseTable.get(self, self:_normalize_key(key))
end

function BaseArray:set(key, value)
  return BaseTable.set(self, self:_normalize_key(key), value)
end

function BaseArray:delete()
  fail(string.format("table %s: an array's entries cannot be deleted (set them to zero)", self.name))
end

function BaseArray:size()
  return self.max_entries
end

--- Iterate over the leaves in index order (with_index: 1-based index,
--- leaf).
function BaseArray:items(with_index)
  local n = 0
  local max = self.max_entries
  local pkey = self.c_key()
  local pvalue = ffi.new("uint8_t[?]", self.value_size)
  return function()
    if n >= max then
      return nil
    end
    pkey[0] = n
    n = n + 1
    if not maps.lookup(self.map_fd, pkey, pvalue) then
      return nil
    end
    if with_index then
      return n, self:_leaf(pvalue)
    end
    return self:_leaf(pvalue)
  end
end

local Array = class("Array", BaseArray)

function Array:initialize(bpf, name, info, key_type, leaf_type)
  BaseArray.initialize(self, BaseTable.BPF_MAP_TYPE_ARRAY, bpf, name, info, key_type, leaf_type)
end

---------------------------------------------------------------------------
-- per-CPU tables: a leaf per possible CPU, each padded to 8 bytes

local PerCpu = {}

local function percpu_setup(self)
  self.ncpus = sys.possible_cpus()
  self.stride = math.ceil(self.leaf_t.size / 8) * 8
  self.value_size = self.stride * self.ncpus
  self.percpu_t = ffi.typeof(self.leaf_t.name .. "[?]")
end

-- the per-CPU leaves of a value buffer: leaf[ncpus], indexed by CPU
function PerCpu._leaf(self, bytes)
  local out = self.percpu_t(self.ncpus)
  local p = ffi.cast("const uint8_t *", bytes)
  for cpu = 0, self.ncpus - 1 do
    ffi.copy(out + cpu, p + cpu * self.stride, self.leaf_t.size)
  end
  return out
end

-- value: one leaf for every CPU, or a list/array of them (index = CPU)
function PerCpu._leaf_buf(self, value)
  local buf = ffi.new("uint8_t[?]", self.value_size)
  for cpu = 0, self.ncpus - 1 do
    local v = value
    if type(value) == "table" then
      v = value[cpu + 1]
    elseif type(value) == "cdata" and ffi.istype(self.percpu_t, value) then
      v = value[cpu]
    end
    if v ~= nil then
      local one = self.c_leaf(v)
      ffi.copy(buf + cpu * self.stride, one, self.leaf_t.size)
    end
  end
  return buf
end

--- The leaves of key summed over CPUs (numeric leaves), or nil.
function PerCpu.sum(self, key)
  local v = self:get(key)
  if v == nil then
    return nil
  end
  local s = 0ULL
  for cpu = 0, self.ncpus - 1 do
    s = s + v[cpu]
  end
  return s
end

function PerCpu.max(self, key)
  local v = self:get(key)
  if v == nil then
    return nil
  end
  local m = v[0]
  for cpu = 1, self.ncpus - 1 do
    if v[cpu] > m then
      m = v[cpu]
    end
  end
  return m
end

function PerCpu.average(self, key)
  local s = self:sum(key)
  return s and tonumber(s) / self.ncpus
end

local PerCpuHash = class("PerCpuHash", HashTable)
local PerCpuArray = class("PerCpuArray", BaseArray)
for k, f in pairs(PerCpu) do
  PerCpuHash[k] = f
  PerCpuArray[k] = f
end

function PerCpuHash:initialize(bpf, name, info, key_type, leaf_type)
  HashTable.initialize(self, bpf, name, info, key_type, leaf_type)
  percpu_setup(self)
end

function PerCpuArray:initialize(bpf, name, info, key_type, leaf_type)
  BaseArray.initialize(self, BaseTable.BPF_MAP_TYPE_PERCPU_ARRAY, bpf, name, info, key_type, leaf_type)
  percpu_setup(self)
end

---------------------------------------------------------------------------

local PerfEventArray = class("PerfEventArray", BaseArray)

function PerfEventArray:initialize(bpf, name, info, key_type, leaf_type)
  BaseArray.initialize(self, BaseTable.BPF_MAP_TYPE_PERF_EVENT_ARRAY, bpf, name, info, key_type, leaf_type)
end

--- callback(cpu, event) for each record, event a pointer to data_type
--- (C text; data_params fill its "$" holes) valid during the call only;
--- without data_type, the type libbcc saw passed to perf_submit.
--- page_cnt: pages per CPU (default 8); lost_cb(cpu, lost).
function PerfEventArray:open_perf_buffer(callback, data_type, data_params, page_cnt, lost_cb)
  if type(callback) ~= "function" then
    fail("open_perf_buffer: the first argument must be the callback function")
  end
  local ptr_t
  if data_type and data_params then
    ptr_t = ffi.typeof(data_type .. " *", unpack(data_params))
  elseif data_type then
    ptr_t = c_type(data_type).ptr
  else
    local ev = ctypes.from_fields(self.info.fields)
    if not ev then
      fail("open_perf_buffer: give the record's C type (libbcc could not describe what "
        .. self.name .. ".perf_submit sends)")
    end
    ptr_t = ffi.typeof(ev.name .. " *")
  end
  local lost
  if lost_cb then
    lost = function(n, cpu)
      lost_cb(cpu, n)
    end
  end
  local b, msg = buffer.open_perf({ fd = self.map_fd }, nil, function(p, _, cpu)
    callback(cpu, ffi.cast(ptr_t, p))
  end, page_cnt or 8, lost)
  if not b then
    fail(msg)
  end
  self.source = b
  self.bpf:perf_buffer_store(self.name, self.source)
  return self
end

---------------------------------------------------------------------------

local StackTrace = class("StackTrace", BaseTable)

StackTrace.static.MAX_STACK = 127

function StackTrace:initialize(bpf, name, info, key_type, leaf_type)
  BaseTable.initialize(self, BaseTable.BPF_MAP_TYPE_STACK_TRACE, bpf, name, info, key_type, leaf_type)
  self.depth = math.floor(info.leaf_size / 8)
end

--- Iterate over the addresses of stack id, leaf first (uint64 cdata);
--- nothing for a negative id or one no longer in the table.
function StackTrace:walk(id)
  local ips = {}
  id = tonumber(id)
  if id and id >= 0 then
    local buf = ffi.new("uint64_t[?]", self.depth)
    local key = ffi.new("uint32_t[1]", id)
    if maps.lookup(self.map_fd, key, buf) then
      for i = 0, math.min(self.depth, StackTrace.MAX_STACK) - 1 do
        if buf[i] == 0 then
          break
        end
        ips[#ips + 1] = buf[i]
      end
    end
  end
  local i = 0
  return function()
    i = i + 1
    return ips[i]
  end
end

--- The stack as a list: resolver(addr) of each address, or the addresses.
function StackTrace:get(id, resolver)
  local out = {}
  for addr in self:walk(id) do
    out[#out + 1] = resolver and resolver(addr) or addr
  end
  return out
end

---------------------------------------------------------------------------

local CLASSES = {
  [BaseTable.BPF_MAP_TYPE_HASH] = HashTable,
  [BaseTable.BPF_MAP_TYPE_LRU_HASH] = HashTable,
  [BaseTable.BPF_MAP_TYPE_ARRAY] = Array,
  [BaseTable.BPF_MAP_TYPE_PERCPU_HASH] = PerCpuHash,
  [BaseTable.BPF_MAP_TYPE_LRU_PERCPU_HASH] = PerCpuHash,
  [BaseTable.BPF_MAP_TYPE_PERCPU_ARRAY] = PerCpuArray,
  [BaseTable.BPF_MAP_TYPE_PERF_EVENT_ARRAY] = PerfEventArray,
  [BaseTable.BPF_MAP_TYPE_STACK_TRACE] = StackTrace,
}

--- The table `name` of bpf, or nil when the program has none of that name.
local function NewTable(bpf, name, key_type, leaf_type)
  local info = bpf._d.m:table_info(name)
  if not info or info.fd < 0 then
    return nil
  end
  local cls = CLASSES[info.type]
  if not cls then
    fail(string.format("table %s: map type %d is not supported here (hash, array, per-CPU, perf event "
      .. "array and stack trace tables are)", name, info.type))
  end
  return cls:new(bpf, name, info, key_type, leaf_type)
end

return NewTable
