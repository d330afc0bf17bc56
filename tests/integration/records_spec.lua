-- Records declared once (bpf-src/dn_records.h): the FFI lays each one out
-- as the host's C compiler does (the text Lua declares is the one C
-- compiled) and as the BPF compiler does (libbcc's descriptions of the
-- maps and ring buffer records that hold them, field by field). Changing a
-- field in the header changes every side; a record declared a second time
-- in Lua fails here.
local ffi = require("ffi")
local core = require("denet.core")
local ctypes = require("denet.ctypes")
local records = require("denet.records")

-- The fields of libbcc's description of a struct (its JSON), or of a
-- record passed to a ring buffer ("name#type" strings).
local function desc_fields(desc)
  local out = {}
  for name in desc:gmatch('%["([%w_]+)",') do
    out[#out + 1] = name
  end
  -- (the first match of a struct description is the struct's own name)
  table.remove(out, 1)
  return out
end

local function field_names(list)
  local out = {}
  for _, f in ipairs(list) do
    out[#out + 1] = f:match("^(.-)#")
  end
  return out
end

-- Each field of `names` sits at the same offset, and the whole is as
-- large, in the FFI's record and in the type libbcc described.
local function same_layout(record, ct, names, what)
  local rt = records.type(record)
  assert.equals(ffi.sizeof(rt), ffi.sizeof(ct), what .. ": size")
  assert.is_true(#names >= 2, what .. ": fields " .. #names)
  for _, n in ipairs(names) do
    assert.equals(ffi.offsetof(rt, n), ffi.offsetof(ct, n), what .. ": " .. n)
  end
end

describe("records shared by C and Lua", function()
  it("each is laid out by the FFI as the host's C compiler lays it out", function()
    local n = 0
    for _, r in ipairs(core.records()) do
      assert.equals(r.size, ffi.sizeof("struct " .. r.name), r.name)
      assert.matches("^struct " .. r.name .. " {", r.decl)
      n = n + 1
    end
    assert.is_true(n >= 10, "records " .. n)
    assert.equals(3, records.const.DN_LEAF_FRAMES)
    -- array sizes are the header's constants
    assert.equals(records.const.DN_KT_INNER, ffi.sizeof(ffi.new("struct dn_kt_rec").inner))
  end)

  it("and as the BPF compiler lays out the maps and events that hold them", function()
    local compose = require("denet.compose")
    -- user stacks by frame pointers (--unwind fp), and from unwind tables
    for _, case in ipairs({
      { unwind = "fp", maps = {
        { table = "dn_tracked", leaf = "dn_task" },
        { table = "dn_ut", key = "dn_ut_key", leaf = "dn_ut" },
        { table = "dn_kt", key = "dn_kt_key" },
        { table = "dn_leaf_rules", key = "dn_leaf_key" },
      }, rings = {
        { table = "dn_tree_events", record = "dn_tree_event" },
        { table = "dn_kt_learn", record = "dn_kt_rec" },
        { table = "dn_ut_learn", record = "dn_ut_rec" },
        { table = "dn_leaf_ask", record = "dn_leaf_ask" },
      } },
      { unwind = "dwarf", maps = {
        { table = "dn_uw_pages", key = "dn_uw_page_key", leaf = "dn_uw_page" },
        { table = "dn_uwt", key = "dn_uwt_key" },
      }, rings = {
        { table = "dn_uw_miss", record = "dn_uw_copy" },
      } },
    }) do
      local p = compose.build{ features = { offcpu = { unwind = case.unwind }, monitor = {} }, name = "records",
        autoattach = false }
      local m = p.bpf.m
      -- map keys and leaves
      for _, c in ipairs(case.maps) do
        local info = m:table_info(c.table)
        assert.is_not_nil(info, c.table)
        for _, part in ipairs({ "key", "leaf" }) do
          if c[part] then
            local d = ctypes.from_desc(info[part .. "_desc"], info[part .. "_size"])
            same_layout(c[part], d.ct, desc_fields(info[part .. "_desc"]), c.table .. " " .. part)
          end
        end
      end
      -- records sent through ring buffers
      for _, c in ipairs(case.rings) do
        local fields = m:table_info(c.table).fields
        local d = ctypes.from_fields(fields)
        same_layout(c.record, d.ct, field_names(fields), c.table)
      end
      p.bpf:close()
    end
    -- the task iterator's record
    local s = compose.build{ parts = { "snapshot" }, name = "records", autoattach = false }
    local info = s.bpf.m:table_info("dn_snap_buf")
    same_layout("dn_snap_rec", ctypes.from_desc(info.leaf_desc, info.leaf_size).ct, desc_fields(info.leaf_desc),
      "dn_snap_buf")
    s.bpf:close()
  end)

  it("none is declared a second time in Lua", function()
    local names = {}
    for _, r in ipairs(core.records()) do
      names[#names + 1] = r.name
    end
    local _, out = H.sh("grep -rnE 'struct (" .. table.concat(names, "|") .. ") *\\{' " .. H.quote(H.source .. "/lib")
      .. " " .. H.quote(H.source .. "/scripts"))
    assert.equals("", out)
  end)
end)
