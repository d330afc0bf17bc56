-- Syscall tracking on a fixture with exact, known syscalls: counts, errors,
-- latency buckets, forked children, other processes left out, the
-- filters, per-process and interval output, the monitor's fields.
local cjson = require("cjson")

local function syscalls(opts, argv)
  local args = { "script", "syscalls", "--json" }
  for _, o in ipairs(opts) do
    args[#args + 1] = o
  end
  if argv then
    args[#args + 1] = "--"
    for _, a in ipairs(argv) do
      args[#args + 1] = a
    end
  end
  local code, out, err = H.denet(args)
  assert.equals(0, code, err)
  return cjson.decode(out), out
end

local function row(list, name)
  for _, r in ipairs(list) do
    if r.name == name then
      return r
    end
  end
end

local MIX = function()
  return { H.fixture("syscall_mix") }
end

describe("denet script syscalls", function()
  it("counts exactly: 100000 getppid (+2500 in a forked child), 5000 write, 777 openat failing ENOENT", function()
    -- another process making getppid calls all along is not counted
    local other = io.popen(H.quote(H.fixture("getppid_n")) .. " 3000000 2>/dev/null", "r")
    local r = syscalls({ "-T", "50" }, MIX())
    other:close()
    assert.equals(102500, row(r.syscalls, "getppid").count)
    assert.equals(5000, row(r.syscalls, "write").count)
    local openat = row(r.syscalls, "openat")
    assert.equals(777, openat.errors.ENOENT)
    assert.equals(H.nr("openat"), openat.nr)
    assert.equals(1, row(r.syscalls, "nanosleep").count)
    -- and what the loader and libc do at start and exit
    assert.is_true(r.total >= 108277 and r.total < 108600, "total " .. r.total)
    local sum = 0
    for _, n in pairs(r.by_category) do
      sum = sum + n
    end
    assert.equals(r.total, sum)
    assert.is_true(r.by_category.process >= 102500 and r.by_category.file_io >= 5778)
    assert.is_nil(r.processes)
  end)

  it("-L puts a 100 ms nanosleep in the [2^26, 2^27) ns bucket", function()
    local r = syscalls({ "-L", "-T", "50" }, MIX())
    local ns = row(r.syscalls, "nanosleep")
    assert.equals(1, ns.timed)
    assert.is_true(ns.max_ns >= 100e6 and ns.max_ns < 134217728, "max " .. ns.max_ns)
    -- hist[k] (0-based in JSON) counts [2^(k-1), 2^k) ns; 1-based here
    assert.equals(28, #ns.hist)
    assert.equals(1, ns.hist[28])
    local g = row(r.syscalls, "getppid")
    local n = 0
    for _, c in ipairs(g.hist) do
      n = n + c
    end
    assert.equals(g.timed, n)
    assert.equals(102500, g.count)
    assert.is_true(g.total_ns > 0 and g.max_ns > 0 and g.total_ns / g.timed < 1e6)
    -- the text report prints histograms
    local code, out = H.denet({ "script", "syscalls", "-L", "--syscall", "nanosleep", "--", H.fixture("syscall_mix") })
    assert.equals(0, code)
    assert.matches("67108864 %-> 134217727%s+: 1 ", out)
  end)

  it("-x keeps failed calls only, -e one errno, --syscall some syscalls", function()
    local r = syscalls({ "-x" }, MIX())
    assert.is_nil(row(r.syscalls, "getppid"))
    assert.equals(777, row(r.syscalls, "openat").count)
    assert.equals(r.total, r.errors)

    r = syscalls({ "-e", "ENOENT" }, MIX())
    assert.equals(777, row(r.syscalls, "openat").count)
    for _, s in ipairs(r.syscalls) do
      for e in pairs(s.errors) do
        assert.equals("ENOENT", e)
      end
    end
    r = syscalls({ "-e", "EBADF" }, MIX())
    assert.is_nil(row(r.syscalls, "openat"))

    r = syscalls({ "--syscall", "write,getppid" }, MIX())
    assert.equals(2, #r.syscalls)
    assert.equals(102500, row(r.syscalls, "getppid").count)
    assert.equals(5000, row(r.syscalls, "write").count)
    assert.equals(107500, r.total)
  end)

  it("-P splits per process (the child apart), --per-thread per thread", function()
    local r = syscalls({ "-P" }, MIX())
    assert.equals(2, #r.processes)
    local parent, child = r.processes[1], r.processes[2]
    assert.equals("syscall_mix", parent.comm)
    assert.equals(100000, row(parent.syscalls, "getppid").count)
    assert.equals(2500, row(child.syscalls, "getppid").count)
    assert.is_true(child.pid ~= parent.pid)
    r = syscalls({ "--per-thread" }, MIX())
    assert.equals(2, #r.threads)
    assert.is_not_nil(r.threads[1].tid)
    local code, out = H.denet({ "script", "syscalls", "-P", "--", H.fixture("syscall_mix") })
    assert.equals(0, code)
    assert.matches("PID %d+  syscall_mix  %d+ calls", out)
  end)

  it("-i prints each interval's calls; they add up to the run's", function()
    local code, out, err = H.denet({ "script", "syscalls", "--json", "-i", "0.05", "--syscall", "getppid", "--",
      H.fixture("getppid_n"), "20000", "300", "20000" })
    assert.equals(0, code, err)
    local n, lines = 0, 0
    for line in out:gmatch("[^\n]+") do
      local r = cjson.decode(line)
      lines = lines + 1
      n = n + r.total
    end
    assert.is_true(lines >= 4, "lines " .. lines)
    assert.equals(40000, n)
  end)

  it("follows an existing process with -p, and watches the machine with no target", function()
    local out = H.tmpfile(".json")
    -- the fixture makes 1000 calls, then pauses: it is stopped there
    -- until tracing runs, and its 5000 calls after the pause are the ones
    -- counted
    local sh = string.format([[%s 1000 2000 5000 & p=$!; state $p S; kill -STOP $p;
      %s script syscalls --json -p $p > %s & s=$!; attached $s; kill -CONT $p;
      wait $p; kill -INT $s; wait $s]], H.quote(H.fixture("getppid_n")), H.quote(H.bin), H.quote(out))
    H.sh("bash -c " .. H.quote(H.WAIT_SH .. sh))
    local r = cjson.decode(H.slurp(out))
    assert.equals(5000, row(r.syscalls, "getppid").count)

    sh = string.format([[%s script syscalls --json --syscall getppid > %s & s=$!; attached $s;
      %s 12345; kill -INT $s; wait $s]], H.quote(H.bin), H.quote(out), H.quote(H.fixture("getppid_n")))
    H.sh("bash -c " .. H.quote(H.WAIT_SH .. sh))
    r = cjson.decode(H.slurp(out))
    assert.is_true(row(r.syscalls, "getppid").count >= 12345)
  end)

  it("adds aggregated.ebpf.syscalls to the monitor's stream with denet run --syscalls, the run's to the summary",
    function()
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    local code = H.denet({ "run", "-q", "--syscalls", "-o", out, "--stats", stats, "--", H.fixture("syscall_mix") })
    assert.equals(0, code)
    local n = 0
    for line in io.lines(out) do
      local r = cjson.decode(line)
      if r.kind == "tree" then
        n = n + (r.aggregated.ebpf.syscalls and 1 or 0)
      end
    end
    assert.is_true(n >= 1)
    local sc = cjson.decode(H.slurp(stats)).ebpf.syscalls
    assert.equals("getppid", sc.top_syscalls[1].name)
    assert.equals(102500, sc.top_syscalls[1].count)
    assert.is_true(sc.total >= 108278, "total " .. sc.total)
    assert.is_true(sc.by_category.process >= 102500)
    assert.is_true(sc.analysis.syscall_rate_per_sec >= 0 and sc.analysis.cpu_intensity > 0.9)
  end)

  it("lists syscall names with -l and rejects bad input with one line, exit 2", function()
    local code, out = H.denet({ "script", "syscalls", "-l" })
    assert.equals(0, code)
    assert.matches("\ngetppid\n", out)
    local bad = {
      { { "-e", "EFOO" }, "unknown errno 'EFOO'" },
      { { "--syscall", "nosuch" }, "unknown syscall 'nosuch'" },
      { { "-T", "0" }, "-T needs a positive number" },
      { { "-p", "999999999" }, "no such process: 999999999" },
      { { "-P", "--per-thread" }, "exclude each other" },
      { { "--frobnicate" }, "unknown argument '--frobnicate'" },
    }
    for _, b in ipairs(bad) do
      local args = { "script", "syscalls" }
      for _, a in ipairs(b[1]) do
        args[#args + 1] = a
      end
      local c, _, err = H.denet(args)
      assert.equals(2, c, err)
      assert.matches(b[2], err, 1, true)
      assert.equals(1, select(2, err:gsub("\n", "")), err)
    end
  end)
end)
