-- libbcc type descriptions become FFI types of the right size and shape.
local ctypes = require("denet.ctypes")
local ffi = require("ffi")

describe("ctypes.from_desc", function()
  it("maps scalar names and marks how they read", function()
    local u32 = ctypes.from_desc('"unsigned int"', 4)
    assert.equals(4, u32.size)
    assert.equals("small", u32.scalar)
    local u64 = ctypes.from_desc('"unsigned long long"', 8)
    assert.equals("wide", u64.scalar)
    assert.equals(8, ffi.sizeof(u64.ct))
    assert.equals("small", ctypes.from_desc('"_Bool"', 1).scalar)
  end)

  it("builds structs with arrays, nesting and packing", function()
    local d = ctypes.from_desc([=[["key_t", [["pid","unsigned int"], ["comm","char", [16]],
      ["", [["a","unsigned short"], ["b","unsigned short"]], "union"],
      ["ip","unsigned long long", [2, 3]] ], "struct_packed"] ]=], 4 + 16 + 2 + 48)
    local v = d.ct()
    v.pid = 7
    ffi.copy(v.comm, "abc")
    v.a = 5
    v.ip[1][2] = 9
    assert.equals(7, v.pid)
    assert.equals("abc", ffi.string(v.comm))
    assert.equals(5, v.b) -- the anonymous union shares a and b
    assert.equals(9, tonumber(v.ip[1][2]))
    assert.same({ { name = "pid", kind = "small" }, { name = "comm" }, { name = "" }, { name = "ip" } }, d.fields)
  end)

  it("handles bit-fields", function()
    local d = ctypes.from_desc([=[["f", [["lo","unsigned int", 4], ["hi","unsigned int", 28]], "struct"] ]=], 4)
    local v = d.ct()
    v.lo, v.hi = 15, 1
    assert.equals(15, v.lo)
    assert.equals(1, v.hi)
  end)

  it("raises when LuaJIT's layout disagrees with the BPF size", function()
    assert.has_error(function()
      ctypes.from_desc('"unsigned int"', 8)
    end, "type unsigned int is 4 bytes in LuaJIT but 8 in BPF")
  end)

  it("accepts size 0 (ring buffers describe no leaf)", function()
    assert.equals(4, ctypes.from_desc('"int"', 0).size)
  end)
end)

describe("ctypes.from_fields", function()
  it("builds the record type of perf_submit/ringbuf_output", function()
    local ev = ctypes.from_fields({ "pid#u32", "seq#u32", "ts#u64", "comm#char[16]", "st#enum state" })
    assert.equals(4 + 4 + 8 + 16 + 4 + 4, ev.size) -- trailing padding to 8
    local v = ev.ct()
    v.seq = 3
    assert.equals(3, v.seq)
  end)

  it("returns nil when there is nothing to describe", function()
    assert.is_nil(ctypes.from_fields({}))
    assert.is_nil(ctypes.from_fields({ "broken" }))
  end)
end)
