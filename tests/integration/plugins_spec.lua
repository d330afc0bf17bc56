-- Plugins: hook order and arguments on each built-in, wall-clock
-- intervals, isolation of a failing plugin, the trust check, the search
-- path, list / info / generated help, and the example plugins on fixtures.
local _ -- results a test does not look at
local cjson = require("cjson")

-- A plugin that writes one JSON line per hook call to `log`.
local function recorder(log, extra)
  return H.script(string.format([[
local cjson = require("cjson")
local log = assert(io.open(%q, "w"))
local function note(hook, t)
  t = t or {}
  t.hook = hook
  log:write(cjson.encode(t), "\n")
  log:flush()
end
local P = { description = "records hooks", category = "test", interval = 0.2,
  args = { { name = "tag", default = "none" } } }
function P.on_init(args) note("on_init", { tag = args.tag }) end
function P.on_start(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  note("on_start", { pid = t.pid, cmd = t.cmd, mode = t.mode, executable = t.executable, pids = t.pids,
    keys = table.concat(keys, ",") })
end
function P.on_sample(s) note("on_sample", { kind = s.kind, has_agg = s.aggregated ~= nil }); return { seen = true } end
function P.on_process(e) note("on_process", { kind = e.kind, pid = e.pid, ppid = e.ppid }) end
function P.on_syscalls(s) note("on_syscalls", { total = s.total, kind = s.kind }) end
function P.on_offcpu(r) note("on_offcpu", { kind = r.kind, threads = r.threads and #r.threads }) end
function P.on_interval(e) note("on_interval", { elapsed = e }) end
function P.on_end(s) note("on_end", { kind = s.kind }) end
%s
return P
]], log, extra or ""))
end

local read_log = H.jsonl

local function hooks_of(list)
  local seq = {}
  for _, e in ipairs(list) do
    if seq[#seq] ~= e.hook then
      seq[#seq + 1] = e.hook
    end
  end
  return seq
end

local function find(list, hook)
  local out = {}
  for _, e in ipairs(list) do
    if e.hook == hook then
      out[#out + 1] = e
    end
  end
  return out
end

describe("plugins", function()
  it("on the monitor: init, start before the command runs, processes, samples, end; fields in the JSONL", function()
    local log, out = H.tmpfile(".log"), H.tmpfile(".jsonl")
    local p = recorder(log)
    local code, _, err = H.denet({ "run", "-q", "--syscalls", "--plugin", p .. ":tag=x", "-o", out, "--",
      H.fixture("sleep_tree"), "3", "1" })
    assert.equals(0, code, err)
    local list = read_log(log)
    assert.equals("on_init", list[1].hook)
    assert.equals("x", list[1].tag)
    assert.equals("on_start", list[2].hook)
    assert.equals(H.fixture("sleep_tree"), list[2].cmd[1])
    assert.equals("cmd,executable,mode,pid,pids", list[2].keys)
    assert.equals("run", list[2].mode)
    assert.equals("on_end", list[#list].hook)
    local forks = 0
    for _, e in ipairs(find(list, "on_process")) do
      if e.kind == "fork" then
        forks = forks + 1
        assert.equals(list[2].pid, e.ppid)
      end
    end
    assert.equals(2, forks)
    local samples = find(list, "on_sample")
    assert.is_true(#samples >= 3)
    assert.equals("tree", samples[1].kind)
    -- on_syscalls follows each sample when --syscalls is on, and the
    -- whole run's figures come once more at the end
    assert.equals(#samples + 1, #find(list, "on_syscalls"))
    -- on_interval ticks on wall-clock time
    assert.is_true(#find(list, "on_interval") >= 3)
    local n = 0
    for line in io.lines(out) do
      local r = cjson.decode(line)
      if r.kind == "tree" then
        assert.is_true(r.plugins[p:match("([^/]+)%.lua$")].seen)
        n = n + 1
      end
    end
    assert.equals(#samples, n)
  end)

  it("on offcpu and syscalls: on_offcpu / on_syscalls with the reports, then on_end", function()
    local log = H.tmpfile(".log")
    local p = recorder(log)
    local code, _, err = H.denet({ "script", "offcpu", "--plugin", p, "--", H.fixture("sleep_loop"), "3", "50" })
    assert.equals(0, code, err)
    local seq = hooks_of(read_log(log))
    assert.same({ "on_init", "on_start", "on_offcpu", "on_end" }, { seq[1], seq[2], seq[#seq - 1], seq[#seq] })
    assert.equals("offcpu", find(read_log(log), "on_offcpu")[1].kind)
    -- on_start: the same payload from every built-in (the monitor's is
    -- checked above)
    local start = find(read_log(log), "on_start")[1]
    assert.equals("cmd,executable,mode,pid,pids", start.keys)
    assert.equals("run", start.mode)
    assert.equals(H.fixture("sleep_loop"), start.executable)
    assert.same({ start.pid }, start.pids)
    -- on_end: a summary, as the monitor's
    assert.equals("summary", read_log(log)[#read_log(log)].kind)

    code, _, err = H.denet({ "script", "syscalls", "-i", "0.04", "--plugin", p, "--", H.fixture("syscall_mix") })
    assert.equals(0, code, err)
    local list = read_log(log)
    local sc = find(list, "on_syscalls")
    assert.is_true(#sc >= 3)
    assert.equals("syscalls", sc[1].kind)
    assert.equals("on_end", list[#list].hook)
    -- the fixture forks one child: on_process sees it come and go
    local kinds = {}
    for _, e in ipairs(find(list, "on_process")) do
      kinds[e.kind] = (kinds[e.kind] or 0) + 1
      assert.equals(list[2].pid, e.kind == "fork" and e.ppid or list[2].pid)
    end
    assert.equals(1, kinds.fork)
    assert.is_true(kinds.exit >= 1)
  end)

  it("on_interval runs on wall-clock time with no events, and returning false ends the run", function()
    local log = H.tmpfile(".log")
    -- an idle process: off-CPU tracing of it sees no event at all
    local p = recorder(log, "P.interval = 0.1")
    local sh = string.format("%s 30 & s=$!; %s script offcpu -d 1.5 -p $s --plugin %s >/dev/null; kill $s",
      H.quote(H.fixture("sleeper")), H.quote(H.bin), H.quote(p))
    H.sh("bash -c " .. H.quote(sh))
    local ticks = find(read_log(log), "on_interval")
    assert.is_true(#ticks >= 10 and #ticks <= 16, "ticks " .. #ticks)
    assert.is_true(ticks[1].elapsed >= 0.09 and ticks[1].elapsed < 0.3)

    local stopper = H.script([[
local n = 0
return { description = "stops", interval = 0.1, on_interval = function() n = n + 1; return n < 3 end }
]])
    local t0 = os.time()
    local stats = H.tmpfile(".stats")
    local code = H.denet({ "run", "-q", "--plugin", stopper, "--stats", stats, "--", "sleep", "30" })
    assert.is_true(os.time() - t0 < 8)
    assert.equals(143, code) -- the command was ended with SIGTERM
    assert.equals(143, cjson.decode(H.slurp(stats)).exit_code)
  end)

  it("a failing plugin is reported, disabled after 3 errors, and does not disturb another", function()
    local bad = H.script([[
return { description = "fails", on_sample = function() error("boom") end }
]])
    local good = H.script([[
local n = 0
return { description = "counts", on_sample = function() n = n + 1; return { n = n } end,
  on_end = function() return { samples = n } end }
]])
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    local code, _, err = H.denet({ "run", "-q", "--plugin", bad, "--plugin", good, "-o", out, "--stats", stats, "--",
      H.fixture("sleep_loop"), "8", "100" })
    assert.equals(0, code, err)
    local badname, goodname = bad:match("([^/]+)%.lua$"), good:match("([^/]+)%.lua$")
    local _, n = err:gsub("plugin " .. badname .. ": [^\n]*%.lua:1: boom", "")
    assert.equals(3, n, err)
    assert.matches("plugin " .. badname .. ": disabled after 3 errors", err)
    local samples, last = 0, 0
    for line in io.lines(out) do
      local r = cjson.decode(line)
      if r.kind == "tree" then
        samples = samples + 1
        last = r.plugins[goodname].n
        assert.is_nil(r.plugins[badname])
      end
    end
    local summary = cjson.decode(H.slurp(stats))
    assert.equals(samples, last)
    assert.equals(samples, summary.plugins[goodname].samples)
  end)

  it("refuses a plugin others can write, with the fix; --allow-untrusted overrides", function()
    local p = H.script([[return { description = "x", on_end = function() io.stdout:write("ran\n") end }]])
    os.execute("chmod 666 " .. H.quote(p))
    local code, out, err = H.denet({ "run", "-q", "--plugin", p, "--", "true" })
    assert.equals(2, code)
    assert.matches("refusing to load .*: it is writable by everyone %(fix: chmod go%-w", err)
    assert.equals(1, select(2, err:gsub("\n", "")), err)
    assert.equals("", out)
    code, out = H.denet({ "run", "-q", "--allow-untrusted", "--plugin", p, "--", "true" })
    assert.equals(0, code)
    assert.matches("ran", out)
    -- a folder others can write
    local dir = H.tmpfile("-dir")
    os.execute(string.format("mkdir -m 777 %s", H.quote(dir)))
    local q = H.write(dir .. "/q.lua", [[return { description = "q", on_end = function() end }]])
    code, _, err = H.denet({ "script", q, "--", "true" })
    assert.equals(2, code)
    assert.matches("its folder .* is writable by everyone", err)
  end)

  it("finds scripts on the search path; list, info and generated help describe them", function()
    local dir = H.tmpfile("-path")
    os.execute("mkdir -m 755 " .. H.quote(dir))
    H.write(dir .. "/hello-plugin.lua", [[
return { description = "says hello", category = "greetings",
  args = { { name = "who", required = true, help = "whom to greet" } },
  on_end = function() io.stdout:write("hello\n") end,
  on_init = function(a) io.stdout:write("to ", a.who, "\n") end }
]])
    local env = "DENET_PATH=" .. H.quote(dir) .. " "
    local code, out = H.denet({ "list" }, env)
    assert.equals(0, code)
    assert.matches("greetings\n  hello%-plugin +plugin +says hello", out)
    assert.matches("analysis\n", out)
    assert.matches("  offcpu +command", out)
    assert.matches("  syscalls +command", out)
    assert.matches("  slow%-syscalls +plugin", out)
    code, out = H.denet({ "info", "hello-plugin" }, env)
    assert.equals(0, code)
    assert.matches("hello%-plugin: plugin, category greetings", out)
    assert.matches("%-%-who WHO +whom to greet %(required%)", out)
    code, out = H.denet({ "script", "hello-plugin", "--help" }, env)
    assert.equals(0, code)
    assert.matches("usage: denet script hello%-plugin", out)
    local err
    code, _, err = H.denet({ "script", "hello-plugin", "--", "true" }, env)
    assert.equals(2, code)
    assert.matches("missing %-%-who %(see denet script hello%-plugin %-%-help%)", err)
    code, out = H.denet({ "script", "hello-plugin", "--who", "you", "--", "true" }, env)
    assert.equals(0, code)
    assert.matches("to you\nhello\n", out)
    -- a command is not a plugin
    code, _, err = H.denet({ "run", "-q", "--plugin", "offcpu", "--", "true" })
    assert.equals(2, code)
    assert.matches("plugin offcpu: .*offcpu%.lua is not a plugin", err)
    code, _, err = H.denet({ "script", "offcpu", "--stack-depth", "x" })
    assert.equals(2, code)
    assert.matches("%-%-stack%-depth needs a non%-negative whole number, got 'x'", err)
  end)
end)

describe("example plugins", function()
  it("slow-syscalls: each slow call with its stack", function()
    local code, out = H.denet({ "script", "slow-syscalls", "--threshold-ms", "20", "--", H.fixture("sleep_loop"),
      "3", "30" })
    assert.equals(0, code)
    local _, n = out:gsub("ms  clock_nanosleep = 0  pid %d+ tid %d+ %(sleep_loop%)\n[^\n]*\n%s+nap %[sleep_loop%]", "")
    assert.equals(3, n, out)
    assert.matches("slow%-syscalls: 3 calls of 20 ms or more", out)
    -- a threshold above the sleeps: none
    code, out = H.denet({ "script", "slow-syscalls", "--threshold-ms", "100", "--", H.fixture("sleep_loop"), "3",
      "30" })
    assert.equals(0, code)
    assert.matches("slow%-syscalls: 0 calls", out)
  end)

  it("mem-growth: warns above the limit, not below, and writes its fields", function()
    local stats, timeline = H.tmpfile(".stats"), H.tmpfile(".timeline")
    -- 20 MiB every 100 ms when each step is quick enough: about 200 MiB/s;
    -- the fixture writes the growth it really achieved
    local code, _, err = H.denet({ "run", "-q", "--plugin", "mem-growth:limit_mib_s=50", "--stats", stats, "--",
      H.fixture("mem_grow"), "20", "20", "100", timeline })
    assert.equals(0, code)
    assert.matches("mem%-growth: RSS grew %d+%.%d MiB/s", err)
    local summary = cjson.decode(H.slurp(stats))
    local mg = summary.plugins["mem-growth"]
    assert.is_true(mg.warnings >= 3)
    -- its growth rate over the whole growth: the plugin's fastest window
    -- (1 s, at least 0.5 s) is at least that, less what the edges of a
    -- window miss, and at most the paced rate and one step more
    local t = {}
    for line in H.slurp(timeline):gmatch("[^\n]+") do
      t[#t + 1] = tonumber(line)
    end
    assert.equals(21, #t)
    local achieved = 20 * 20 / (t[#t] - t[1])
    assert.is_true(mg.peak_growth_mib_s >= 0.8 * achieved and mg.peak_growth_mib_s <= 200 * 1.5,
      string.format("peak %.1f MiB/s; the fixture grew %.1f MiB/s", mg.peak_growth_mib_s, achieved))
    code, _, err = H.denet({ "script", "mem-growth", "--limit-mib-s", "1000", "--", H.fixture("mem_grow"), "20", "10",
      "100" })
    assert.equals(0, code)
    assert.matches("mem%-growth: 0 warnings", err)
  end)

  it("func-latency: every call of the function counted in the histogram", function()
    local code, out = H.denet({ "script", "func-latency", "--func", "dn_target_fn", "--", H.fixture("ufunc"), "5000" })
    assert.equals(0, code)
    assert.matches("dn_target_fn: 5000 calls, average %d+ ns", out)
    local n = 0
    for c in out:gmatch("%d+ %-> %d+ +: (%d+)") do
      n = n + tonumber(c)
    end
    assert.equals(5000, n)
  end)

  it("io-by-file: bytes per path, across the processes of the tree", function()
    local f = H.tmpfile(".dat")
    local code, out = H.denet({ "script", "io-by-file", "--", "sh", "-c",
      string.format("%s %s 4 && %s %s", H.fixture("write_fsync"), f, H.fixture("read_file"), f) })
    assert.equals(0, code)
    local line = out:match("[^\n]*" .. f:gsub("%p", "%%%0") .. "\n")
    assert.is_not_nil(line, out)
    local rd, wr, reads, writes = line:match("^%s*(%d+)%s+(%d+)%s+(%d+)%s+(%d+)")
    assert.equals(4194304, tonumber(rd))
    assert.equals(4194304, tonumber(wr))
    assert.equals(64, tonumber(reads))
    assert.equals(4, tonumber(writes))
  end)
end)
