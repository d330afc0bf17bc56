-- Prometheus export, checked by a real Prometheus (Debian's package):
-- it scrapes three denet runs every second, and its HTTP API must give the
-- fixtures' figures; the Grafana dashboard's every query must return data;
-- a recorded run backfilled with promtool must read back its records.
local cjson = require("cjson")
local core = require("denet.core")
local denet = require("denet")

-- A port nothing listens on now (the kernel's pick, released).
local function free_port()
  local srv = assert(core.http_serve("127.0.0.1:0"))
  local port = srv:port()
  srv:close()
  return port
end

local function curl(url, args)
  local q = { "curl", "-sf", "--max-time", "10" }
  for _, a in ipairs(args or {}) do
    q[#q + 1] = a
  end
  q[#q + 1] = url
  local parts = {}
  for i, a in ipairs(q) do
    parts[i] = H.quote(a)
  end
  local code, out = H.sh(table.concat(parts, " "))
  return code, out
end

-- Start prometheus on port with config (YAML text) and storage dir; wait
-- until it is ready.
local function prometheus(port, config, storage)
  local cfg = H.write(H.tmpfile(".yml"), config)
  local p = denet.spawn({ "prometheus", "--config.file=" .. cfg, "--storage.tsdb.path=" .. storage,
    "--web.listen-address=127.0.0.1:" .. port, "--log.level=warn" },
    { stdout = H.tmpfile(".prom.out"), stderr = H.tmpfile(".prom.err") }):resume()
  local deadline = denet.clock() + 60
  while curl(string.format("http://127.0.0.1:%d/-/ready", port)) ~= 0 do
    assert(denet.clock() < deadline, "prometheus did not get ready")
    assert(p:try_wait() == false, "prometheus exited")
    denet.sleep(0.1)
  end
  return p
end

-- An instant query at time t (seconds): the result vector.
local function query(port, q, t)
  local code, out = curl(string.format("http://127.0.0.1:%d/api/v1/query", port),
    { "-G", "--data-urlencode", "query=" .. q, "--data-urlencode", "time=" .. string.format("%.3f", t) })
  assert.equals(0, code, "query failed: " .. q)
  local r = cjson.decode(out)
  assert.equals("success", r.status, out)
  return r.data.result
end

-- A range query over [t0, t1] at step seconds, as a Grafana panel asks:
-- the result matrix.
local function query_range(port, q, t0, t1, step)
  local code, out = curl(string.format("http://127.0.0.1:%d/api/v1/query_range", port),
    { "-G", "--data-urlencode", "query=" .. q, "--data-urlencode", string.format("start=%.3f", t0),
      "--data-urlencode", string.format("end=%.3f", t1), "--data-urlencode", "step=" .. step })
  assert.equals(0, code, "query failed: " .. q)
  local r = cjson.decode(out)
  assert.equals("success", r.status, out)
  return r.data.result
end

-- The last value of the series q selects, as of t (a run that ended
-- earlier is stale by then: last_over_time still has its final figures).
local function value(port, q, t)
  local res = query(port, "last_over_time(" .. q .. "[10m])", t)
  assert.equals(1, #res, q .. ": " .. cjson.encode(res))
  return tonumber(res[1].value[2])
end

describe("Prometheus scraping denet", function()
  local pport, prom, t_end
  local ports = {}
  local stats = {}

  setup(function()
    ports = { cpu = free_port(), sys = free_port(), off = free_port() }
    pport = free_port()
    local targets = {}
    for _, p in pairs(ports) do
      targets[#targets + 1] = string.format("'127.0.0.1:%d'", p)
    end
    local dir = H.tmpfile(".tsdb")
    prom = prometheus(pport, string.format([[
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: denet
    static_configs:
      - targets: [%s]
]], table.concat(targets, ", ")), dir)
    -- three runs at once: CPU (a child spinning 6 s), exact syscalls,
    -- known sleeps; each keeps its final figures up until scraped
    local function run(port, extra, cmd)
      local st = H.tmpfile(".stats")
      local argv = { H.bin, "run", "-q", "--prometheus", tostring(port), "--prometheus-linger", "20", "--stats", st }
      for _, a in ipairs(extra) do
        argv[#argv + 1] = a
      end
      argv[#argv + 1] = "--"
      for _, a in ipairs(cmd) do
        argv[#argv + 1] = a
      end
      return denet.spawn(argv, { stdout = "null", stderr = H.tmpfile(".err") }):resume(), st
    end
    local a, sa = run(ports.cpu, { "--syscalls", "--offcpu" }, { H.fixture("spin_children"), "1", "6" })
    local b, sb = run(ports.sys, { "--syscalls" }, { H.fixture("syscall_mix") })
    local c, sc = run(ports.off, { "--offcpu" }, { H.fixture("sleep_loop"), "20", "300" })
    assert.equals(0, a:wait())
    assert.equals(0, b:wait())
    assert.equals(0, c:wait())
    stats = { cpu = cjson.decode(H.slurp(sa)), sys = cjson.decode(H.slurp(sb)), off = cjson.decode(H.slurp(sc)) }
    -- every run lingered until a scrape had its final figures
    t_end = denet.time()
  end)

  teardown(function()
    if prom then
      prom:kill(denet.SIGTERM)
      prom:wait{ timeout = 10 }
    end
  end)

  it("has the tree's CPU seconds within 5% of the kernel's rusage", function()
    local cpu = value(pport, 'denet_cpu_seconds_total{target="spin_children"}', t_end)
    local kernel = stats.cpu.cpu_time_secs
    assert.is_true(kernel > 1, "the children spun: " .. kernel)
    assert.is_true(math.abs(cpu - kernel) <= 0.05 * kernel, string.format("prometheus %.3f, kernel %.3f", cpu, kernel))
    -- labels: the command's name and its pid
    local res = query(pport, 'last_over_time(denet_cpu_seconds_total{target="spin_children"}[10m])', t_end)
    assert.matches("^%d+$", res[1].metric.pid)
    assert.equals("denet", res[1].metric.job)
  end)

  it("has exact syscall counts, errors by errno and a latency histogram", function()
    -- syscall_mix: 100000 getppid in the parent, 2500 in its child; 5000
    -- writes; 777 openat of a missing file
    assert.equals(102500, value(pport, 'denet_syscalls_total{target="syscall_mix",syscall="getppid"}', t_end))
    assert.equals(5000, value(pport, 'denet_syscalls_total{target="syscall_mix",syscall="write"}', t_end))
    assert.is_true(value(pport, 'denet_syscall_errors_total{target="syscall_mix",syscall="openat",errno="ENOENT"}',
      t_end) >= 777)
    -- the one 100 ms nanosleep lands in the bucket up to 2^27 ns (0.134 s)
    local le = value(pport, 'denet_syscall_duration_seconds_bucket{target="syscall_mix",syscall="nanosleep",'
      .. 'le="0.268435456"}', t_end)
    local below = value(pport, 'denet_syscall_duration_seconds_bucket{target="syscall_mix",syscall="nanosleep",'
      .. 'le="0.067108864"}', t_end)
    assert.equals(1, le)
    assert.equals(0, below)
    assert.equals(102500, value(pport, 'denet_syscall_duration_seconds_count{target="syscall_mix",syscall="getppid"}',
      t_end))
  end)

  it("has the off-CPU sleep seconds of the sleeps", function()
    -- sleep_loop 20 300: 6 s asleep in nanosleep
    local s = value(pport, 'denet_offcpu_seconds_total{target="sleep_loop",category="sleep"}', t_end)
    assert.is_true(s >= 6.0 and s < 6.4, "sleep seconds " .. s)
    local th = value(pport, 'denet_offcpu_thread_seconds_total{target="sleep_loop",comm="sleep_loop",'
      .. 'category="sleep"}', t_end)
    assert.is_true(math.abs(th - s) < 1e-6)
  end)

  it("answers every query of the Grafana dashboard with data", function()
    local dash = cjson.decode(H.slurp(H.source .. "/dashboards/denet.json"))
    local exprs = {}
    local function walk(t)
      if type(t) ~= "table" then
        return
      end
      if type(t.expr) == "string" then
        exprs[#exprs + 1] = t.expr
      end
      for _, v in pairs(t) do
        walk(v)
      end
    end
    walk(dash.panels)
    assert.is_true(#exprs >= 15, "queries: " .. #exprs)
    local rows = {}
    for _, p in ipairs(dash.panels) do
      if p.type == "row" then
        rows[#rows + 1] = p.title
      end
    end
    assert.same({ "CPU", "Memory", "I/O", "Syscalls", "Off-CPU" }, rows)
    -- Grafana's variables as it would fill them: every target; a rate
    -- window that covers the runs; the panel's time range the last
    -- minute, so a run's series count even after it went stale (its
    -- process exited)
    for _, e in ipairs(exprs) do
      local q = e:gsub("%$target", "spin_children|syscall_mix|sleep_loop"):gsub("%$__rate_interval", "2m")
      local res = query_range(pport, q, t_end - 60, t_end, 1)
      local points = 0
      for _, series in ipairs(res) do
        points = points + #series.values
      end
      assert.is_true(points > 0, "no data for: " .. q)
    end
    -- the target variable's label_values() query
    local _, out = curl(string.format("http://127.0.0.1:%d/api/v1/label/target/values", pport))
    local targets = cjson.decode(out).data
    table.sort(targets)
    assert.same({ "sleep_loop", "spin_children", "syscall_mix" }, targets)
  end)
end)

describe("the /metrics endpoint", function()
  it("speaks both formats, lints clean, and binds 127.0.0.1 unless told otherwise", function()
    local port = free_port()
    local err = H.tmpfile(".err")
    local p = denet.spawn({ H.bin, "run", "-q", "--syscalls", "--offcpu", "--prometheus", tostring(port),
      "--prometheus-linger", "30", "--", H.fixture("sleep_loop"), "4", "250" }, { stdout = "null", stderr = err })
      :resume()
    local url = string.format("http://127.0.0.1:%d/metrics", port)
    -- wait for the first figures
    local deadline, text = denet.clock() + 60, ""
    while not text:find("denet_cpu_seconds_total", 1, true) do
      assert(denet.clock() < deadline, "no metrics: " .. H.slurp(err))
      denet.sleep(0.05)
      local _, o = curl(url)
      text = o or ""
    end
    local code, out = H.sh("curl -sf " .. H.quote(url) .. " | promtool check metrics")
    assert.equals(0, code, out)
    local _, head = curl(url, { "-D", "-", "-o", "/dev/null" })
    assert.matches("[Cc]ontent%-[Tt]ype: text/plain; version=0%.0%.4", head)
    local om
    _, head = curl(url, { "-D", "-", "-o", "/dev/null", "-H", "Accept: application/openmetrics-text; version=1.0.0" })
    assert.matches("[Cc]ontent%-[Tt]ype: application/openmetrics%-text; version=1%.0%.0", head)
    _, om = curl(url, { "-H", "Accept: application/openmetrics-text; version=1.0.0" })
    assert.matches("\n# EOF\n$", om)
    assert.matches("# TYPE denet_cpu_seconds counter\n# UNIT denet_cpu_seconds seconds\n", om)
    assert.matches("\ndenet_syscall_duration_seconds_bucket{[^}]*le=\"%+Inf\"} %d+\n", om)
    assert.equals(22, curl(string.format("http://127.0.0.1:%d/other", port))) -- 404: curl -f says 22
    assert.matches("serving metrics on http://127%.0%.0%.1:" .. port .. "/metrics", H.slurp(err))
    -- every label set has target and pid
    for line in text:gmatch("[^\n]+") do
      if not line:find("^#") then
        assert.matches('^denet_[%w_]+{target="sleep_loop",pid="%d+"', line)
      end
    end
    p:kill(denet.SIGTERM)
    p:wait()
  end)

  it("is served by denet script syscalls and offcpu too, with their final figures", function()
    local function final_scrape(argv, want)
      local port = free_port()
      local out, err = H.tmpfile(".out"), H.tmpfile(".err")
      local args = { H.bin, "script" }
      for _, a in ipairs(argv.script) do
        args[#args + 1] = a
      end
      for _, a in ipairs({ "--prometheus", tostring(port), "--prometheus-linger", "30", "--" }) do
        args[#args + 1] = a
      end
      for _, a in ipairs(argv.cmd) do
        args[#args + 1] = a
      end
      local p = denet.spawn(args, { stdout = out, stderr = err }):resume()
      -- the report is printed once the final figures are published
      local deadline = denet.clock() + 60
      while not H.slurp(out):find(want, 1, true) do
        assert(denet.clock() < deadline, "no report: " .. H.slurp(err))
        assert(p:try_wait() == false, "ended before a scrape: " .. H.slurp(err))
        denet.sleep(0.05)
      end
      local code, body = curl(string.format("http://127.0.0.1:%d/metrics", port))
      assert.equals(0, code)
      -- that scrape was what it lingered for
      assert.equals(0, p:wait{ timeout = 10 })
      return body
    end
    local body = final_scrape({ script = { "syscalls" }, cmd = { H.fixture("getppid_n"), "4321" } }, "getppid")
    assert.matches('\ndenet_syscalls_total{target="getppid_n",pid="%d+",syscall="getppid"} 4321\n', body)
    assert.matches('\ndenet_syscall_duration_seconds_count{target="getppid_n",pid="%d+",syscall="getppid"} 4321\n',
      body)
    body = final_scrape({ script = { "offcpu" }, cmd = { H.fixture("sleep_loop"), "4", "250" } }, "sleep_loop")
    local s = tonumber(body:match(
      '\ndenet_offcpu_seconds_total{target="sleep_loop",pid="%d+",category="sleep"} ([%d.e+-]+)'))
    assert.is_true(s and s >= 1.0 and s < 1.1, body)
  end)

  it("refuses a bad address or a port in use in one line", function()
    local code, _, err = H.denet({ "run", "--prometheus", "localhost:99999", "--", "true" })
    assert.equals(2, code)
    assert.matches("^denet: %-%-prometheus: '99999' is not a port", err)
    local srv = assert(core.http_serve("127.0.0.1:0"))
    code, _, err = H.denet({ "run", "--prometheus", "127.0.0.1:" .. srv:port(), "--", "true" })
    srv:close()
    assert.equals(2, code)
    assert.matches("^denet: %-%-prometheus: cannot listen on 127%.0%.0%.1:%d+: Address already in use", err)
  end)
end)

describe("a recorded run, backfilled", function()
  it("reads back from Prometheus as its records say", function()
    local jsonl = H.tmpfile(".jsonl")
    local code, _, err = H.denet({ "run", "-q", "--syscalls", "--offcpu", "-o", jsonl, "--", H.fixture("sleep_loop"),
      "6", "100" })
    assert.equals(0, code, err)
    local om = H.tmpfile(".om")
    code, _, err = H.denet({ "export", jsonl, "--openmetrics", "-o", om })
    assert.equals(0, code, err)
    local text = H.slurp(om)
    assert.matches("\n# EOF\n$", text)
    assert.matches("# TYPE denet_cpu_seconds counter\n# UNIT denet_cpu_seconds seconds\n", text)
    local dir = H.tmpfile(".tsdb")
    code, _, err = H.sh("promtool tsdb create-blocks-from openmetrics " .. H.quote(om) .. " " .. H.quote(dir))
    assert.equals(0, code, err)
    -- the last record's figures, at its own time
    local last
    for line in io.lines(jsonl) do
      local rec = cjson.decode(line)
      if rec.kind == "tree" then
        last = rec
      end
    end
    local port = free_port()
    local p = prometheus(port, "global:\n  scrape_interval: 1m\n", dir)
    local t = last.ts_ms / 1000
    local ok, e = pcall(function()
      assert.equals(last.aggregated.mem_rss_kb * 1024, value(port, 'denet_memory_rss_bytes{target="sleep_loop"}', t))
      assert.equals(last.aggregated.ctx_switches_voluntary,
        value(port, 'denet_context_switches_total{target="sleep_loop",kind="voluntary"}', t))
      local by = last.aggregated.ebpf.offcpu.by_category_ns
      assert.is_true(math.abs(by.sleep / 1e9 - value(port, 'denet_offcpu_seconds_total{category="sleep"}', t)) < 1e-6)
      -- one point per record
      local n = 0
      for line in io.lines(jsonl) do
        if line:find('"kind":"tree"', 1, true) then
          n = n + 1
        end
      end
      local res = query(port, 'count_over_time(denet_threads{target="sleep_loop"}[1h])', t)
      assert.equals(n, tonumber(res[1].value[2]))
    end)
    p:kill(denet.SIGTERM)
    p:wait{ timeout = 10 }
    assert(ok, e)
  end)
end)
