-- denet.bpf.buffer: records from BPF perf and ring buffers, through the
-- host's event loop (host/dn_loop.c): each buffer is a source of the loop,
-- its callback called from C for each record, typed as the program
-- declared it. What a buffer drops is counted: perf buffers as the kernel
-- reports it, ring buffers by denet's rewrite of the program's output
-- calls (denet.bpf.source).
local ffi = require("ffi")
local core = require("denet.core")
local ctypes = require("denet.ctypes")

local M = {}

local Buffer = {}
Buffer.__index = Buffer

--- Stop reading: the loop source is closed (records left are not
--- delivered). Idempotent.
function Buffer:close()
  if self.src then
    self.src:close()
    self.src = nil
  end
end

--- Records lost so far: perf buffers count what the kernel dropped;
--- ring buffers count failed ringbuf_output/ringbuf_reserve calls of the
--- program (see docs/lua-api.md).
function Buffer:lost()
  if self.kind == "perf" then
    return self.src and core.loop_lost(self.src.id) or self.lost_final or 0
  end
  return self.table.bpf:ringbuf_lost(self.table.name)
end

--- The type of a table's records, from libbcc's fields of what was
--- passed to perf_submit/ringbuf_output ({ name = ffi type name }), or
--- nil (raw bytes).
function M.event_type(fields)
  return ctypes.from_fields(fields)
end

-- Wrap a user callback so it receives typed records (and, from perf
-- buffers, the CPU that wrote them).
local function typed_cb(ev, cb)
  local ptr_t = ev and ffi.typeof(ev.name .. " *") or ffi.typeof("const uint8_t *")
  return function(p, size, cpu)
    cb(ffi.cast(ptr_t, p), size, cpu)
  end
end

--- A perf buffer on the perf event array of table t (one reader per
--- online CPU): cb(record, size, cpu) for each record, typed as ev ({
--- name = an FFI type name }, nil: raw bytes); page_cnt pages per CPU;
--- lost_cb(n, cpu). Returns the buffer, or nil and why.
function M.open_perf(t, ev, cb, page_cnt, lost_cb)
  local id, msg = core.loop_perfbuf(t.fd, require("denet.sys").online_cpus(), page_cnt, typed_cb(ev, cb), lost_cb)
  if not id then
    return nil, msg
  end
  return setmetatable({ kind = "perf", table = t, src = require("denet")._source(id) }, Buffer)
end

--- A ring buffer on table t: cb(record, size) for each record, typed as
--- ev. Returns the buffer, or nil and why.
function M.open_ring(t, ev, cb)
  local id, msg = core.loop_ringbuf(t.fd, typed_cb(ev, cb))
  if not id then
    return nil, msg
  end
  return setmetatable({ kind = "ring", table = t, src = require("denet")._source(id) }, Buffer)
end

M.Buffer = Buffer
return M
