-- The original denet's readers keep working: its records and only them in
-- the JSONL, every field its (strict, serde) structs require with the type
-- they require (shared/reference: original-denet.md), its flags, and
-- `denet stats` on its untagged files.
local _ -- results a test does not look at
local cjson = require("cjson")

local records = H.jsonl

local function is_int(v)
  return type(v) == "number" and v == math.floor(v)
end

-- the fields the original's Metrics struct requires, and their types
local METRICS = {
  ts_ms = is_int, cpu_usage = "number", mem_rss_kb = is_int, mem_vms_kb = is_int, disk_read_bytes = is_int,
  disk_write_bytes = is_int, sys_net_rx_bytes = is_int, sys_net_tx_bytes = is_int, thread_count = is_int,
  uptime_secs = is_int,
}
local AGGREGATED = {}
for k, v in pairs(METRICS) do
  AGGREGATED[k] = v
end
AGGREGATED.process_count = is_int

local function check(rec, schema, what)
  for k, want in pairs(schema) do
    local v = rec[k]
    if type(want) == "function" then
      assert.is_true(want(v), string.format("%s.%s = %s", what, k, tostring(v)))
    else
      assert.equals(want, type(v), string.format("%s.%s", what, k))
    end
  end
end

describe("the JSONL", function()
  it("holds env, metadata and tree records only, typed as the original's readers need", function()
    local out = H.tmpfile(".jsonl")
    local code = H.denet({ "run", "-q", "--write-env", "-i", "50", "-m", "50", "-o", out, "--",
      H.fixture("spin_children"), "2", "0.6" })
    assert.equals(0, code)
    local recs = records(out)
    assert.equals("env", recs[1].kind)
    assert.equals("metadata", recs[2].kind)
    for i = 3, #recs do
      assert.equals("tree", recs[i].kind, "record " .. i)
    end
    -- env: the original's types
    local env = recs[1]
    assert.is_true(is_int(env.ts_ms))
    assert.is_string(env.host)
    for _, k in ipairs({ "sockets", "cores_per_socket", "threads_per_core" }) do
      assert.is_true(is_int(env.lscpu[k]), k)
    end
    assert.is_string(env.lscpu.model)
    assert.equals("table", type(env.numa))
    assert.equals(#env.numa.distances, env.numa.nodes)
    assert.equals(#env.numa.node_sizes_mb, env.numa.nodes)
    assert.is_string(env.affinity_inherited)
    -- the raw sysfs line, e.g. "always [madvise] never"
    assert.equals((H.slurp("/sys/kernel/mm/transparent_hugepage/enabled"):gsub("%s+$", "")), env.thp_enabled)
    assert.matches("0::", env.cgroup)
    -- metadata: the executable is /proc/PID/exe
    local meta = recs[2]
    assert.equals(H.fixture("spin_children"), meta.executable)
    assert.is_true(is_int(meta.pid) and is_int(meta.t0_ms))
    assert.is_boolean(meta.capabilities.psi.system)
    -- trees: parent, children and aggregated with every required field
    local saw_children = false
    for i = 3, #recs do
      local r = recs[i]
      check(r.parent, METRICS, "parent")
      check(r.aggregated, AGGREGATED, "aggregated")
      for _, c in ipairs(r.children) do
        saw_children = true
        assert.equals("spin_children", c.command) -- the process name
        check(c.metrics, METRICS, "child")
      end
    end
    assert.is_true(saw_children)
    -- the last record is a real sample: its root was still there
    assert.is_true(recs[#recs].aggregated.process_count >= 1)
    assert.equals("table", type(recs[#recs].parent))
  end)

  it("--exclude-children: every sample record is complete, the last one too", function()
    local out = H.tmpfile(".jsonl")
    local code = H.denet({ "run", "-q", "--exclude-children", "-o", out, "--", H.fixture("spin_children"), "1",
      "0.4" })
    assert.equals(0, code)
    local recs = records(out)
    assert.is_true(#recs >= 4)
    for i = 2, #recs do
      assert.equals("sample", recs[i].kind)
      check(recs[i], METRICS, "sample " .. i)
    end
  end)
end)

describe("the summary", function()
  it("goes to --stats with the original's fields, and denet stats -o writes it", function()
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    local code = H.denet({ "run", "-q", "-o", out, "--stats", stats, "--", H.fixture("write_fsync"),
      H.tmpfile(".dat"), "2" })
    assert.equals(0, code)
    local s = cjson.decode(H.slurp(stats))
    for _, k in ipairs({ "total_time_secs", "sample_count", "max_processes", "max_threads", "total_disk_read_bytes",
      "total_disk_write_bytes", "total_sys_net_rx_bytes", "total_sys_net_tx_bytes", "peak_mem_rss_kb",
      "avg_cpu_usage", "peak_page_faults_cached", "peak_page_faults_disk" }) do
      assert.is_number(s[k], k)
    end
    -- 2 MiB written and fsync'd (the file system may add a block or two)
    assert.is_true(s.total_disk_write_bytes >= 2 * 1048576 and s.total_disk_write_bytes < 2 * 1048576 + 65536,
      s.total_disk_write_bytes)
    local again = H.tmpfile(".summary")
    local c2, stdout = H.denet({ "stats", out, "-o", again })
    assert.equals(0, c2)
    assert.matches("samples", stdout)
    local s2 = cjson.decode(H.slurp(again))
    assert.equals(s.sample_count, s2.sample_count)
  end)

  it("denet stats reads the original's untagged files; a file with no samples is one line, exit 2", function()
    local legacy = H.tmpfile(".jsonl")
    local lines = { cjson.encode({ pid = 7, cmd = { "x" }, executable = "/bin/x", t0_ms = 1000 }) }
    for i = 1, 5 do
      lines[#lines + 1] = cjson.encode({ ts_ms = 1000 + 1000 * i, parent = cjson.null, children = {},
        aggregated = { ts_ms = 1000 + 1000 * i, cpu_usage = 100, mem_rss_kb = 1000 * i, mem_vms_kb = 1,
          disk_read_bytes = 10 * i, disk_write_bytes = 0, sys_net_rx_bytes = 0, sys_net_tx_bytes = 0,
          thread_count = i, process_count = i, uptime_secs = i } })
    end
    H.write(legacy, table.concat(lines, "\n") .. "\n")
    local code, out = H.denet({ "stats", legacy, "--json" })
    assert.equals(0, code)
    local s = cjson.decode(out)
    assert.equals(5, s.sample_count)
    assert.equals(5, s.max_processes)
    assert.equals(5000, s.peak_mem_rss_kb)
    assert.equals(50, s.total_disk_read_bytes)
    assert.equals(100, s.avg_cpu_usage)
    assert.equals(5, s.total_time_secs) -- from the metadata's t0 to the last sample
    local empty = H.write(H.tmpfile(".jsonl"), lines[1] .. "\n")
    local c2, o2, err = H.denet({ "stats", empty })
    assert.equals(2, c2)
    assert.equals("", o2)
    assert.equals(1, select(2, err:gsub("\n", "")), err)
    assert.matches("holds no samples", err)
  end)
end)

describe("the original's flags", function()
  it("-V prints the version, --debug says what denet does, --no-polling samples nothing until the end", function()
    local code, out = H.denet({ "-V" })
    assert.equals(0, code)
    assert.matches("^denet %d+%.%d+%.%d+", out)
    local err
    code, _, err = H.denet({ "run", "-q", "--debug", "--", "true" })
    assert.equals(0, code)
    assert.matches("denet: debug: tree bpf, built in [%d.]+ s: ", err)
    local o, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    code = H.denet({ "run", "-q", "--no-polling", "-o", o, "--stats", stats, "--", H.fixture("fork_burn"), "3",
      "100" })
    assert.equals(0, code)
    local recs = records(o)
    assert.equals(1, #recs)
    assert.equals("metadata", recs[1].kind)
    local s = cjson.decode(H.slurp(stats))
    assert.equals(0, s.sample_count)
    assert.is_true(math.abs(s.cpu_time_secs - 0.3) < 0.05, "cpu " .. s.cpu_time_secs)
  end)
end)
