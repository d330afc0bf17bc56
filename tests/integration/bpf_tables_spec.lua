-- Real BPF: tracepoints count exactly, tables read and write as typed data.
local denet = require("denet")
local BPF = require("denet.bpf")
local ffi = require("ffi")

local NR_GETPPID = H.nr("getppid")

describe("TRACEPOINT_PROBE on a held child", function()
  for _, n in ipairs({ 1, 25000 }) do
    it("counts exactly " .. n .. " getppid calls", function()
      local p = denet.spawn({ H.fixture("getppid_n"), tostring(n) })
      local b = BPF.new{ text = [[
BPF_HASH(counts, u32, u64);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
  if ((bpf_get_current_pid_tgid() >> 32) != TARGET) return 0;
  if (args->id != NR) return 0;
  u32 k = 0; counts.increment(k);
  return 0;
}
]], cflags = { "-DTARGET=" .. p.pid, "-DNR=" .. NR_GETPPID } }
      assert.equals(1, b:num_attached())
      p:resume()
      local code = p:wait()
      assert.equals(0, code)
      local got = {}
      for k, v in b:get_table("counts"):items() do
        got[k] = tonumber(v)
      end
      assert.same({ [0] = n }, got)
      b:close()
    end)
  end

  it("counts the same with RAW_TRACEPOINT_PROBE", function()
    local p = denet.spawn({ H.fixture("getppid_n"), "777" })
    local b = BPF.new{ text = [[
BPF_ARRAY(counts, u64, 1);
RAW_TRACEPOINT_PROBE(sys_enter) {
  if ((bpf_get_current_pid_tgid() >> 32) != TARGET) return 0;
  if (ctx->args[1] != NR) return 0;
  int k = 0; counts.increment(k);
  return 0;
}
]], cflags = { "-DTARGET=" .. p.pid, "-DNR=" .. NR_GETPPID } }
    p:resume()
    p:wait()
    assert.equals(777, tonumber(b:get_table("counts"):get(0)))
    b:close()
  end)
end)

describe("tables", function()
  local b
  before_each(function()
    b = BPF.new{ text = [[
struct key_t { u32 pid; char comm[16]; };
struct val_t { u64 count; u64 bytes; };
BPF_HASH(h, struct key_t, struct val_t, 64);
BPF_ARRAY(a, u32, 4);
BPF_PERCPU_ARRAY(pa, u64, 2);
BPF_PERCPU_HASH(ph, u32, struct val_t);
BPF_TABLE("lru_hash", u64, u32, lru, 4);
]] }
  end)
  after_each(function()
    b:close()
  end)

  it("reads and writes struct keys and leaves by field", function()
    local h = b:get_table("h")
    h:set({ pid = 42, comm = "worker" }, { count = 3, bytes = 4096 })
    h:set({ pid = 7, comm = "x) (y" }, { count = 1, bytes = 1 })
    local v = h:get({ pid = 42, comm = "worker" })
    assert.equals(3, tonumber(v.count))
    assert.equals(4096, tonumber(v.bytes))
    local seen = {}
    for k, leaf in h:items() do
      seen[ffi.string(k.comm)] = { pid = k.pid, count = tonumber(leaf.count) }
    end
    assert.same({ worker = { pid = 42, count = 3 }, ["x) (y"] = { pid = 7, count = 1 } }, seen)
    assert.is_true(h:delete({ pid = 7, comm = "x) (y" }))
    assert.is_false(h:delete({ pid = 7, comm = "x) (y" }))
    assert.is_nil(h:get({ pid = 7, comm = "x) (y" }))
    assert.equals(1, h:len())
    h:clear()
    assert.equals(0, h:len())
  end)

  it("arrays index from 0 and clear to zero", function()
    local a = b:get_table("a")
    a:set(0, 10)
    a:set(3, 13)
    assert.equals(10, a:get(0))
    assert.equals(0, a:get(1))
    assert.equals(13, a:get(3))
    assert.equals(4, a:len())
    a:clear()
    assert.equals(0, a:get(3))
  end)

  it("per-CPU tables give one value per CPU and their sum", function()
    local pa = b:get_table("pa")
    local ncpu = pa.ncpus
    local per = {}
    for c = 1, ncpu do
      per[c] = c * 10
    end
    pa:set(1, per)
    local got = pa:get(1)
    assert.equals(ncpu, #got)
    assert.equals(20, tonumber(got[2] or got[1] * 2))
    local want = 0
    for c = 1, ncpu do
      want = want + c * 10
    end
    assert.equals(want, tonumber(pa:sum(1)))
    local ph = b:get_table("ph")
    ph:set(5, { count = 2, bytes = 100 })
    local s = ph:sum(5)
    assert.equals(2 * ncpu, tonumber(s.count))
    assert.equals(100 * ncpu, tonumber(s.bytes))
    for k, v in ph:items_sum() do
      assert.equals(5, k)
      assert.equals(2 * ncpu, tonumber(v.count))
    end
  end)

  it("LRU hashes evict beyond their size", function()
    local lru = b:get_table("lru")
    for i = 1, 40 do
      lru:set(i + 0ULL, i)
    end
    local n = lru:len()
    assert.is_true(n <= 40 and n >= 1)
    assert.equals(40, lru:get(40ULL))
  end)

  it("names the tables it has when asked for one it has not", function()
    local ok, err = pcall(b.get_table, b, "nope")
    assert.is_false(ok)
    assert.matches("no BPF table named 'nope'", err)
    assert.matches("lru", err)
  end)
end)
