-- The Prometheus families of off-CPU and syscall fields, on made-up
-- records: the live shape gives exact series, and a recorded file's
-- fields of the wrong type add nothing (lib/denet/metrics.lua).
local metrics = require("denet.metrics")

local IDENT = { target = "app", pid = 42 }

-- { ["name{k=v,...}"] = value } of the text exposition's samples
local function samples(fams)
  local out = {}
  for line in metrics.text(fams):gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local series, v = line:match("^(%S+) (%S+)$")
      out[series] = tonumber(v)
    end
  end
  return out
end

local function count(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n
end

describe("denet.metrics", function()
  it("off-CPU seconds per category, the top threads by time, the rest as comm=other", function()
    local stats = {}
    for tid = 1, metrics.TOP_THREADS + 2 do
      -- thread t blocked t ms in io; threads 1 and 2 are below the top N
      stats["42:" .. tid] = { time_ns = tid * 1e6, comm = "w" .. tid, by_category = { io = tid * 1e6 } }
    end
    stats["42:12"].by_category.lock = 5e6
    local fams = metrics.new()
    metrics.add_offcpu(fams, { by_category_ns = { io = 78e6, lock = 5e6 }, thread_stats = stats }, IDENT)
    local s = samples(fams)
    assert.equals(0.078, s['denet_offcpu_seconds_total{target="app",pid="42",category="io"}'])
    assert.equals(0.005, s['denet_offcpu_seconds_total{target="app",pid="42",category="lock"}'])
    assert.equals(0.012,
      s['denet_offcpu_thread_seconds_total{target="app",pid="42",comm="w12",tid="12",category="io"}'])
    assert.equals(0.005,
      s['denet_offcpu_thread_seconds_total{target="app",pid="42",comm="w12",tid="12",category="lock"}'])
    assert.is_nil(s['denet_offcpu_thread_seconds_total{target="app",pid="42",comm="w2",tid="2",category="io"}'])
    -- threads 1 and 2: 3 ms together
    assert.equals(0.003,
      s['denet_offcpu_thread_seconds_total{target="app",pid="42",comm="other",tid="",category="io"}'])
    assert.equals(2 + metrics.TOP_THREADS + 1 + 1, count(s))
  end)

  it("a recorded file's off-CPU and syscall fields of the wrong type add nothing, and never raise", function()
    local rec = { kind = "tree", aggregated = { ebpf = {
      offcpu = { by_category_ns = { io = {}, sleep = "x", lock = 2e9, [3] = 1e9 },
        thread_stats = { ["1:2"] = 7, ["1:3"] = { time_ns = "a", comm = 5, by_category = { io = {}, net = 1e9 } },
          [4] = { time_ns = 1, by_category = 3 } } },
      syscalls = { top_syscalls = { 3, { name = 4, count = 1 }, { name = "read", count = 2 } } },
    } } }
    local s = samples(metrics.from_record(rec, IDENT))
    assert.equals(2, s['denet_offcpu_seconds_total{target="app",pid="42",category="lock"}'])
    assert.equals(1, s['denet_offcpu_seconds_total{target="app",pid="42",category="3"}'])
    assert.is_nil(s['denet_offcpu_seconds_total{target="app",pid="42",category="io"}'])
    assert.equals(1, s['denet_offcpu_thread_seconds_total{target="app",pid="42",comm="?",tid="3",category="net"}'])
    assert.equals(2, s['denet_syscalls_total{target="app",pid="42",syscall="read"}'])
    -- whole fields of the wrong type
    for _, odd in ipairs({ 7, "x", true }) do
      local r = { kind = "tree", aggregated = { ebpf = { offcpu = { by_category_ns = odd, thread_stats = odd },
        syscalls = { top_syscalls = odd } } } }
      local t = samples(metrics.from_record(r, IDENT))
      for k in pairs(t) do
        assert.is_nil(k:match("^denet_offcpu") or k:match("^denet_syscalls"), k)
      end
    end
  end)

  it("a record's network bytes from BPF: two counters; a recorded file's odd values add nothing", function()
    local s = samples(metrics.from_record({ kind = "tree", aggregated = { ebpf = {
      network = { rx_bytes = 20000, tx_bytes = 30000, per_pid = { ["7"] = { rx_bytes = 20000, tx_bytes = 30000 } } },
    } } }, IDENT))
    assert.equals(20000, s['denet_network_received_bytes_total{target="app",pid="42"}'])
    assert.equals(30000, s['denet_network_sent_bytes_total{target="app",pid="42"}'])
    local t = samples(metrics.from_record({ kind = "tree", aggregated = { ebpf = {
      network = { rx_bytes = "x", tx_bytes = {} } } } }, IDENT))
    for k in pairs(t) do
      assert.is_nil(k:match("^denet_network"), k)
    end
  end)
end)
