-- The process monitor on real processes: numbers checked against the
-- fixtures' known behaviour and against the kernel's own rusage (GNU time
-- wrapping the command reports what its children used).
local cjson = require("cjson")

local records = H.jsonl

-- the summary is not in the JSONL (the original's readers take every line
-- for a sample): tests ask for it with --stats and append it here
local function summary_of(recs)
  local s = recs[#recs]
  assert.equals("summary", s.kind)
  return s
end

local function with_summary(recs, stats_path)
  for line in io.lines(stats_path) do
    recs[#recs + 1] = cjson.decode(line)
  end
  return recs
end

local function trees(recs)
  local out = {}
  for _, r in ipairs(recs) do
    if r.kind == "tree" then
      out[#out + 1] = r
    end
  end
  return out
end

-- run denet on argv (a list), JSONL to a temp file; returns code, records,
-- stdout, stderr and the rusage GNU time reported (when timed)
local function run(opts, argv, timed)
  local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
  local args = { "run", "-q", "-o", out, "--stats", stats }
  for _, o in ipairs(opts) do
    args[#args + 1] = o
  end
  args[#args + 1] = "--"
  local tfile
  if timed then
    tfile = H.tmpfile(".time")
    for _, a in ipairs({ "/usr/bin/time", "-f", "%U %S", "-o", tfile }) do
      args[#args + 1] = a
    end
  end
  for _, a in ipairs(argv) do
    args[#args + 1] = a
  end
  local code, stdout, stderr = H.denet(args)
  local ru
  if tfile then
    local u, s = H.slurp(tfile):match("([%d.]+) ([%d.]+)")
    ru = tonumber(u) + tonumber(s)
  end
  return code, with_summary(records(out), stats), stdout, stderr, ru
end

local function within(x, want, frac)
  return math.abs(x - want) <= want * frac
end

describe("denet run", function()
  it("N busy children: CPU % over time adds up to the kernel's CPU time, the total to rusage within 3%", function()
    local code, recs, _, err, ru = run({}, { H.fixture("spin_children"), "2", "2" }, true)
    assert.equals(0, code, err)
    local t = trees(recs)
    local t0 = recs[1].t0_ms
    -- each sample's cpu_usage covers the time since the one before: their
    -- integral is the CPU time the kernel counted for the tree by then,
    -- however much CPU a loaded machine left the children
    local integral, prev, n = 0, t0, 0
    for _, r in ipairs(t) do
      integral = integral + r.aggregated.cpu_usage / 100 * (r.ts_ms - prev) / 1000
      prev = r.ts_ms
      local at = (r.ts_ms - t0) / 1000
      if at > 0.5 and at < 1.6 then
        n = n + 1
        -- time, the fixture and its two children
        assert.equals(4, r.aggregated.process_count)
      end
    end
    assert.is_true(n >= 3, "samples in the steady part: " .. n)
    local kernel = t[#t].aggregated.cpu_time_secs
    assert.is_true(kernel > 0.5, "cpu " .. kernel)
    assert.is_true(within(integral, kernel, 0.05), string.format("integral %.3f s vs kernel %.3f s", integral, kernel))
    local s = summary_of(recs)
    assert.is_true(within(s.cpu_time_secs, ru, 0.03), string.format("%.3f vs rusage %.3f", s.cpu_time_secs, ru))
    assert.equals(4, s.max_processes)
  end)

  it("does not report a new process's first sample as 0%", function()
    local code, recs = run({}, { H.fixture("spin_children"), "2", "0.6" })
    assert.equals(0, code)
    -- the first sample in which each busy child appears already shows it
    -- as busy as its later ones (however much CPU the machine leaves it)
    local first, later = {}, {}
    for _, r in ipairs(trees(recs)) do
      for _, c in ipairs(r.children) do
        if not first[c.pid] then
          first[c.pid] = c.metrics.cpu_usage
        else
          later[c.pid] = later[c.pid] or {}
          table.insert(later[c.pid], c.metrics.cpu_usage)
        end
      end
    end
    local n = 0
    for pid, cpu in pairs(first) do
      n = n + 1
      local l = later[pid] or {}
      assert.is_true(#l >= 2, "later samples of " .. pid)
      table.sort(l)
      local median = l[math.floor((#l + 1) / 2)]
      -- (a loaded machine may run a new child late in its first interval)
      assert.is_true(cpu > 0.25 * median, string.format("pid %d first sample %.1f%%, then %.1f%%", pid, cpu, median))
    end
    assert.equals(2, n)
  end)

  it("8 spinning threads are one process with >= 8 threads, CPU % adding up to kernel and rusage totals", function()
    local code, recs, _, err, ru = run({}, { H.fixture("spin_threads"), "8", "1.5" }, true)
    assert.equals(0, code, err)
    local t0 = recs[1].t0_ms
    local max_threads, integral, prev = 0, 0, t0
    local t = trees(recs)
    for _, r in ipairs(t) do
      -- GNU time and the fixture; the fixture has no children
      assert.is_true(r.aggregated.process_count <= 2)
      assert.is_true(#r.children <= 1)
      max_threads = math.max(max_threads, r.aggregated.thread_count)
      integral = integral + r.aggregated.cpu_usage / 100 * (r.ts_ms - prev) / 1000
      prev = r.ts_ms
    end
    -- up to all the CPUs at once, and every CPU second of the threads seen:
    -- the integral is the kernel's CPU time of the tree at the last sample
    -- (what ran after it, before the exit, is in no sample), the summary's
    -- total the rusage
    assert.is_true(ru > 1, "rusage " .. ru)
    local kernel = t[#t].aggregated.cpu_time_secs
    assert.is_true(kernel > 0.8, "cpu " .. kernel)
    assert.is_true(within(integral, kernel, 0.05), string.format("integral %.3f s vs kernel %.3f s", integral, kernel))
    local s = summary_of(recs)
    assert.is_true(within(s.cpu_time_secs, ru, 0.03), string.format("%.3f vs rusage %.3f", s.cpu_time_secs, ru))
    assert.is_true(max_threads >= 9)
    assert.equals(2, summary_of(recs).max_processes)
  end)

  it("counts 32 MiB written with fsync as disk writes, within 5%", function()
    local file = H.tmpfile(".dat")
    local code, recs = run({}, { H.fixture("write_fsync"), file, "32" })
    assert.equals(0, code)
    local s = summary_of(recs)
    assert.is_true(within(s.total_disk_write_bytes, 32 * 1048576, 0.05), "disk writes " .. s.total_disk_write_bytes)
    assert.is_true(s.total_syscall_write_bytes >= 32 * 1048576)
    -- reading it back from the page cache: syscalls, not the disk (read
    -- once first, so it is all cached whatever the kernel evicted)
    os.execute("cat " .. file .. " > /dev/null")
    code, recs = run({}, { H.fixture("read_file"), file })
    assert.equals(0, code)
    s = summary_of(recs)
    assert.is_true(s.total_syscall_read_bytes >= 32 * 1048576, "read " .. s.total_syscall_read_bytes)
    assert.is_true(s.total_disk_read_bytes <= 32 * 1048576 / 100, "disk reads " .. s.total_disk_read_bytes)
  end)

  it("counts all the CPU of 200 short-lived children, within 5% of rusage", function()
    local code, recs, _, _, ru = run({}, { H.fixture("fork_burn"), "200", "5" }, true)
    assert.equals(0, code)
    local s = summary_of(recs)
    assert.is_true(ru > 0.9, "rusage " .. ru)
    assert.is_true(within(s.cpu_time_secs, ru, 0.05), string.format("%.3f vs rusage %.3f", s.cpu_time_secs, ru))
    -- the tree saw every fork, even of children that lived < one interval
    assert.equals(201, s.processes_started) -- time forks fork_burn, which forks 200
  end)

  it("watches a tree of 300 processes under the usual soft limit of 1024 open files; the command keeps that limit",
    function()
      -- 6 descriptors per watched process: denet raises its soft limit to
      -- the hard one, and gives its command the limit it was given
      local stats, lim = H.tmpfile(".json"), H.tmpfile(".txt")
      local code, _, err = H.denet({ "run", "-q", "--stats", stats, "--", H.fixture("sleep_tree"), "300", "2" },
        "ulimit -S -n 1024; ")
      assert.equals(0, code, err)
      assert.equals(300, cjson.decode(H.slurp(stats)).max_processes)
      assert.is_nil(err:find("too many open files"), err)
      code, _, err = H.denet({ "run", "-q", "--", "/bin/sh", "-c", "ulimit -S -n >" .. H.quote(lim) },
        "ulimit -S -n 1024; ")
      assert.equals(0, code, err)
      assert.equals("1024", H.slurp(lim):match("%d+"))
      -- a hard limit too low for the tree: said once, the rest watched
      code, _, err = H.denet({ "run", "-q", "--stats", stats, "--", H.fixture("sleep_tree"), "100", "2" },
        "ulimit -n 400; ")
      assert.equals(0, code, err)
      local _, said = err:gsub("too many open files: some processes of the tree are not watched", "")
      assert.equals(1, said, err)
      local n = cjson.decode(H.slurp(stats)).max_processes
      assert.is_true(n > 1 and n < 100, "watched " .. n)
    end)

  it("keeps orphaned descendants in the tree, reaps them and counts their CPU", function()
    local code, recs = run({}, { H.fixture("orphan"), "300" })
    assert.equals(0, code)
    local s = summary_of(recs)
    -- the grandchild's 300 ms, re-parented to denet (the subreaper) and
    -- reaped by it, not lost with its exited parent
    assert.is_true(within(s.cpu_time_secs, 0.3, 0.1), "cpu " .. s.cpu_time_secs)
    local saw = false
    for _, r in ipairs(trees(recs)) do
      if #r.children >= 1 then
        saw = true
      end
    end
    assert.is_true(saw)
  end)

  it("passes stdout through and exits with the command's code", function()
    local code, _, stdout = run({}, { H.fixture("exit_with"), "7", "through" })
    assert.equals(7, code)
    assert.equals("through\n", stdout)
    code = run({}, { H.fixture("exit_with"), "kill" })
    assert.equals(137, code)
  end)

  it("with --json keeps stdout pure JSONL and moves the command's output to stderr", function()
    local code, out, err = H.denet({ "run", "--json", "--", H.fixture("exit_with"), "0", "noise" })
    assert.equals(0, code)
    local n = 0
    for line in out:gmatch("[^\n]+") do
      assert.is_table(cjson.decode(line))
      n = n + 1
    end
    assert.is_true(n >= 1)
    assert.equals("metadata", cjson.decode(out:match("[^\n]+")).kind)
    assert.equals("noise\n", err)
  end)

  it("--duration terminates the command and still writes the summary", function()
    local t0 = require("denet").clock()
    local code, recs = run({ "-d", "1" }, { H.fixture("sleeper"), "30" })
    assert.equals(143, code)
    assert.is_true(require("denet").clock() - t0 < 4)
    local s = summary_of(recs)
    assert.equals(143, s.exit_code)
    assert.is_true(math.abs(s.total_time_secs - 1) < 0.3, "ran " .. s.total_time_secs)
  end)

  it("SIGINT leaves a complete stream and the summary, exit 130", function()
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    local sh = string.format(
      [[%s run -q -o %s --stats %s -- %s 30 & p=$!; lines %s 4; kill -INT $p; wait $p; echo rc=$?]],
      H.quote(H.bin), H.quote(out), H.quote(stats), H.quote(H.fixture("sleeper")), H.quote(out))
    sh = H.WAIT_SH .. sh
    local _, o = H.sh("bash -c " .. H.quote(sh))
    assert.equals("rc=130", o:match("rc=%d+"))
    local recs = records(out) -- every line parses
    assert.equals("metadata", recs[1].kind)
    assert.equals("tree", recs[#recs].kind) -- the stream ends with a real sample
    assert.equals(130, summary_of(with_summary(recs, stats)).exit_code)
    assert.is_true(#trees(recs) >= 3)
  end)

  it("denet stats recomputes the summary's figures from the file", function()
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    local code = H.denet({ "run", "-q", "-o", out, "--stats", stats, "--", H.fixture("spin_children"), "2", "0.5" })
    assert.equals(0, code)
    local written = cjson.decode(H.slurp(stats))
    local c2, stdout = H.denet({ "stats", out, "--json" })
    assert.equals(0, c2)
    local again = cjson.decode(stdout)
    for _, k in ipairs({ "sample_count", "max_processes", "max_threads", "peak_mem_rss_kb", "peak_mem_pss_kb",
      "avg_cpu_usage", "total_disk_read_bytes" }) do
      assert.equals(written[k], again[k], k)
    end
    -- the live summary also counts what came after the last sample
    assert.is_true(again.cpu_time_secs <= written.cpu_time_secs)
    assert.is_true(written.cpu_time_secs - again.cpu_time_secs < 0.3)
  end)

  it("samples on the adaptive schedule without drift", function()
    local code, recs = run({ "-i", "50", "-m", "200" }, { H.fixture("sleeper"), "2.5" })
    assert.equals(0, code)
    local t0 = recs[1].t0_ms
    local t = trees(recs)
    -- every sample on its scheduled deadline: 50 ms for the first second,
    -- then growing linearly toward 200 ms; each deadline from the last
    local total_ms = summary_of(recs).total_time_secs * 1000
    local due = H.deadlines(total_ms, 50, 200)
    local worst, j = 0, 1
    for k = 1, #t - 1 do
      -- (a deadline the loop was held up past is skipped, not sampled
      -- late: the nearest deadline from the last one matched on)
      local off = t[k].ts_ms - t0
      while due[j + 1] and math.abs(due[j + 1] - off) < math.abs(due[j] - off) do
        j = j + 1
      end
      worst = math.max(worst, math.abs(off - due[j]))
    end
    -- (a loaded machine wakes the sampler late now and then; drift, each
    -- deadline counted from a late sample, would pass this bound within
    -- the run)
    assert.is_true(worst <= 40, string.format("a sample %d ms off its deadline", worst))
    -- as many samples as deadlines in the run, with those skipped because
    -- the loop was held up past them
    local late = summary_of(recs).samples_late
    assert.is_true(math.abs(#t + late - #due) <= 1, string.format("%d samples, %d late, for %d deadlines", #t,
      late, #due))
  end)

  it("--exclude-children writes flat sample records of the root only", function()
    local code, recs = run({ "--exclude-children" }, { H.fixture("spin_children"), "2", "0.6" })
    assert.equals(0, code)
    local n = 0
    for _, r in ipairs(recs) do
      assert.is_not.equals("tree", r.kind)
      if r.kind == "sample" and r.thread_count then
        n = n + 1
        assert.is_true(r.cpu_usage < 20, "root cpu " .. r.cpu_usage)
      end
    end
    assert.is_true(n >= 3)
  end)

  it("--enable-ebpf adds off-CPU time and syscall counts, as --offcpu --syscalls do", function()
    local code, recs = run({ "--enable-ebpf" }, { H.fixture("sleep_loop"), "5", "20" })
    assert.equals(0, code)
    local e = summary_of(recs).ebpf
    assert.is_true(e.offcpu.total_time_ns >= 5 * 20e6)
    local n = 0
    for _, t in ipairs(e.syscalls.top_syscalls) do
      n = t.name == "clock_nanosleep" and t.count or n
    end
    assert.is_true(n >= 5, "clock_nanosleep " .. n)
  end)

  -- net_bytes N SIZE sends and receives 2 x N x SIZE bytes over IP
  -- sockets (UDP with a peek before each receive, TCP), and N x SIZE over
  -- a Unix socketpair, which is not network
  it("--enable-ebpf counts each process's network bytes exactly: peeks and Unix sockets left out, exited ones kept",
    function()
      local sh = string.format("%s 10 1000 && %s 5 1000 write", H.quote(H.fixture("net_bytes")),
        H.quote(H.fixture("net_bytes")))
      local code, recs = run({ "--enable-ebpf" }, { "sh", "-c", sh })
      assert.equals(0, code)
      local n = summary_of(recs).ebpf.network
      assert.equals("socket", n.source)
      assert.equals(30000, n.rx_bytes)
      assert.equals(30000, n.tx_bytes)
      local per = {}
      for pid, v in pairs(n.per_pid) do
        assert.equals(v.rx_bytes, v.tx_bytes, pid)
        per[#per + 1] = v.tx_bytes
      end
      table.sort(per)
      -- (the shell sent nothing)
      assert.same({ 10000, 20000 }, per)
    end)

  it("network bytes before 6.3 come from the socket syscalls: read and write on a socket are not seen", function()
    local stats = H.tmpfile(".stats")
    local function bytes(mode)
      local code, _, err = H.denet({ "run", "-q", "-o", "/dev/null", "--stats", stats, "--network", "--",
        H.fixture("net_bytes"), "10", "1000", mode }, "DENET_DISABLE=sock_length ")
      assert.equals(0, code, err)
      assert.matches("sock_length", err)
      local n = cjson.decode(H.slurp(stats)).ebpf.network
      assert.equals("syscalls", n.source)
      assert.equals(n.rx_bytes, n.tx_bytes)
      return n.tx_bytes
    end
    -- send/recv: all of it (the peeks left out, from the saved flags)
    assert.equals(20000, bytes("send"))
    -- TCP by write/read: only UDP's sendto/recvfrom are seen
    assert.equals(10000, bytes("write"))
  end)

  it("--write-env writes an env record first", function()
    local code, recs = run({ "--write-env" }, { H.fixture("exit_with"), "0" })
    assert.equals(0, code)
    assert.equals("env", recs[1].kind)
    assert.is_string(recs[1].kernel)
    assert.is_true(recs[1].lscpu.sockets >= 1)
    assert.equals("metadata", recs[2].kind)
  end)
end)

describe("denet attach", function()
  it("follows a running process and its children, odd comms included", function()
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    -- the fixture outlives the attach (ended by -d) however slowly denet
    -- starts on a busy machine
    local sh = string.format(
      [[%s 60 & p=$!; sleep 0.2; %s attach -q -d 1.5 -o %s --stats %s $p; echo rc=$?; kill $p $(pgrep -P $p)]],
      H.quote(H.fixture("odd_comm")), H.quote(H.bin), H.quote(out), H.quote(stats))
    local _, o = H.sh("bash -c " .. H.quote(sh))
    assert.equals("rc=0", o:match("rc=%d+"))
    local recs = with_summary(records(out), stats)
    local saw_child = false
    for _, r in ipairs(trees(recs)) do
      if #r.children == 1 then
        saw_child = true
      end
    end
    assert.is_true(saw_child)
    assert.equals(2, summary_of(recs).max_processes)
  end)
end)

describe("bad input: one line, exit 2, nothing started", function()
  local function one_line(code, err, pattern)
    assert.equals(2, code)
    local n = select(2, err:gsub("\n", ""))
    assert.equals(1, n, err)
    assert.matches(pattern, err)
  end

  it("no such PID", function()
    local code, _, err = H.denet({ "attach", "999999" })
    one_line(code, err, "no such process: 999999")
  end)

  it("a PID the caller may not read", function()
    local code, _, err = H.denet_as_nobody({ "attach", "--no-bpf", "1" })
    one_line(code, err:gsub("[^\n]*polling only[^\n]*\n", ""), "cannot read process 1")
  end)

  it("-o to a path that cannot be written: the command never runs", function()
    local marker = H.tmpfile(".marker")
    local code, _, err = H.denet({ "run", "-o", "/nonexistent/dir/x.jsonl", "--", "touch", marker })
    one_line(code, err, "cannot write /nonexistent/dir/x.jsonl")
    assert.is_false(require("denet.sys").exists(marker))
  end)

  it("unknown options, run without a command, a bad interval", function()
    local code, _, err = H.denet({ "--frobnicate", "run", "--", "true" })
    one_line(code, err, "unknown option '%-%-frobnicate'")
    code, _, err = H.denet({ "run" })
    one_line(code, err, "run needs a command")
    code, _, err = H.denet({ "run", "-i", "abc", "--", "true" })
    one_line(code, err, "%-i/%-%-interval needs a number")
    code, _, err = H.denet({ "run", "--", "no-such-command-xyz" })
    one_line(code, err, "cannot execute 'no%-such%-command%-xyz'")
  end)
end)

describe("without BPF privileges", function()
  it("says what is lost in one line and still monitors by /proc polling", function()
    local dir = H.tmpdir() .. "/shared"
    os.execute("mkdir -p " .. dir .. " && chmod 1777 " .. dir)
    local out, stats = dir .. "/nobody.jsonl", dir .. "/nobody.stats"
    local code, _, err = H.denet_as_nobody({ "run", "-q", "-o", out, "--stats", stats, "--",
      H.readable_fixture("spin_children"), "2", "0.5", "cpu" })
    assert.equals(0, code, err)
    assert.matches("no BPF privileges.*polling only; children that live shorter than one interval are not seen", err)
    local recs = with_summary(records(out), stats)
    local s = summary_of(recs)
    assert.equals(3, s.max_processes)
    -- each child used 0.5 s of CPU: the kernel's count at reaping
    assert.is_true(within(s.cpu_time_secs, 1.0, 0.05), "cpu " .. s.cpu_time_secs)
  end)
end)

describe("the Lua API", function()
  it("a run of the monitor on a command hands each record to a callback", function()
    local runner = require("denet.runner")
    local seen = {}
    local r = runner.new{ target = { cmd = { H.fixture("spin_children"), "1", "0.5", "cpu" } },
      features = { monitor = { interval = 0.05, max_interval = 0.05 } }, on_record = function(rec)
        if rec.kind == "tree" then
          seen[#seen + 1] = rec
        end
      end }
    r:start()
    assert.is_nil(r:run_to_end())
    local summary, code = r:finish() -- what the tree used, counted after the last sample too
    assert.equals(0, code)
    assert.is_true(#seen >= 8)
    assert.equals(#seen, summary.sample_count)
    assert.is_true(seen[3].aggregated.process_count >= 1)
    assert.is_true(math.abs(summary.cpu_time_secs - 0.5) < 0.05, "cpu " .. summary.cpu_time_secs)
  end)

  it("USS: the private pages of a process that touched 48 MiB, as smaps_rollup says at the same moment", function()
    local runner = require("denet.runner")
    local core = require("denet.core")
    local got, peak = {}, 0
    local r
    r = runner.new{ target = { cmd = { H.fixture("mem_grow"), "48", "1", "10" } },
      features = { monitor = { interval = 0.05, max_interval = 0.05, pss_interval = 0.001 } }, on_record = function(rec)
        local text = rec.kind == "tree" and core.read_file("/proc/" .. r.root .. "/smaps_rollup")
        peak = rec.kind == "tree" and math.max(peak, rec.aggregated.mem_uss_kb) or peak
        local rss = text and tonumber(text:match("\nRss:%s*(%d+)"))
        -- (only where the memory stood still between the two reads: the
        -- resident set the sample saw is the kernel's now)
        if rss and rec.aggregated.mem_uss_kb > 0 and math.abs(rss - rec.aggregated.mem_rss_kb) <= 0.01 * rss then
          local clean, dirty = text:match("\nPrivate_Clean:%s*(%d+)"), text:match("\nPrivate_Dirty:%s*(%d+)")
          got[#got + 1] = { rec.aggregated.mem_uss_kb, tonumber(clean) + tonumber(dirty), rec.aggregated.mem_rss_kb }
        end
      end }
    r:start()
    r:run_to_end()
    local summary = r:finish()
    local held = 0
    for _, g in ipairs(got) do
      -- (the kernel's figure, read just after the sample's)
      assert.is_true(math.abs(g[1] - g[2]) <= 0.02 * g[2], string.format("uss %d vs kernel %d", g[1], g[2]))
      assert.is_true(g[1] <= g[3])
      held = math.max(held, g[1])
    end
    assert.is_true(#got >= 2, "samples compared: " .. #got)
    assert.is_true(held >= 48 * 1024, "uss " .. held)
    assert.equals(peak, summary.peak_mem_uss_kb)
  end)
end)
