-- Faults: a target that crashes, denet itself killed with SIGKILL, an
-- output disk that fills up, and plugins that run or allocate without end.
local cjson = require("cjson")
local denet = require("denet")

local records = H.jsonl

local function count_kind(recs, kind)
  local n = 0
  for _, r in ipairs(recs) do
    if r.kind == kind then
      n = n + 1
    end
  end
  return n
end

-- wait (polling, 10 s at most) until f() is true
local function wait_until(f, what)
  local deadline = denet.clock() + 10
  while not f() do
    assert(denet.clock() < deadline, "timed out waiting for " .. what)
    denet.sleep(0.02)
  end
end

local function lines_in(path)
  local f = io.open(path)
  if not f then
    return 0
  end
  local n = 0
  for _ in f:lines() do
    n = n + 1
  end
  f:close()
  return n
end

-- the state letter of /proc/PID/stat, or nil when the process is gone
local function proc_state(pid)
  local s = H.slurp("/proc/" .. pid .. "/stat")
  return s and s:match("%) (%a)")
end

describe("a target that crashes", function()
  it("is reported with its signal, and the JSONL is whole", function()
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    local code, _, err = H.denet({ "run", "-q", "-o", out, "--stats", stats, "--", H.fixture("exit_with"), "segv" })
    assert.equals(128 + 11, code)
    assert.matches("the command was killed by SIGSEGV", err)
    local recs = records(out) -- every line parses
    assert.equals("metadata", recs[1].kind)
    assert.equals("tree", recs[#recs].kind)
    local s = cjson.decode(H.slurp(stats))
    assert.equals("SIGSEGV", s.signal)
    assert.equals(139, s.exit_code)
    assert.is_boolean(s.core_dumped)
    -- the 300 ms of CPU it used before the fault are all counted
    assert.is_true(math.abs(s.cpu_time_secs - 0.3) < 0.03, "cpu " .. s.cpu_time_secs)
    -- the summary table says it too
    _, _, err = H.denet({ "run", "--", H.fixture("exit_with"), "segv" })
    assert.matches("exit code%s+139 %(killed by SIGSEGV", err)
  end)
end)

describe("denet killed with SIGKILL", function()
  it("leaves no program, no command and no port behind: the next run starts cleanly", function()
    local out = H.tmpfile(".jsonl")
    -- a free port for --prometheus, the same for both runs
    local port = 20000 + (denet.clock() * 1000) % 20000
    port = math.floor(port)
    local args = { "run", "-q", "--offcpu", "--syscalls", "--prometheus", "127.0.0.1:" .. port, "-o", out, "--",
      H.fixture("sleeper"), "60" }
    local argv = { H.bin }
    for _, a in ipairs(args) do
      argv[#argv + 1] = a
    end
    local p = denet.spawn(argv, { stdout = "null", stderr = "null" }):resume()
    wait_until(function()
      return lines_in(out) >= 2
    end, "samples")
    local target = records(out)[1].pid
    -- the programs denet holds, from its descriptors
    local progs = {}
    local _, fds = H.sh("ls /proc/" .. p.pid .. "/fdinfo")
    for fd in fds:gmatch("%d+") do
      local info = H.slurp("/proc/" .. p.pid .. "/fdinfo/" .. fd) or ""
      local id = info:match("prog_id:%s*(%d+)")
      if id then
        progs[#progs + 1] = id
      end
    end
    assert.is_true(#progs >= 3, "programs held: " .. #progs)
    -- a scrape, so the port has had a connection
    local code, body = H.sh("curl -sf http://127.0.0.1:" .. port .. "/metrics")
    assert.equals(0, code)
    assert.matches("denet_cpu_seconds_total", body)

    p:kill(denet.SIGKILL)
    p:wait()
    -- the command it started is sent SIGTERM (it is gone, or a zombie)
    wait_until(function()
      local st = proc_state(target)
      return st == nil or st == "Z"
    end, "the command to end")
    -- every program is unloaded
    wait_until(function()
      for _, id in ipairs(progs) do
        if H.sh("bpftool prog show id " .. id .. " >/dev/null 2>&1") == 0 then
          return false
        end
      end
      return true
    end, "the programs to be unloaded")

    -- the same command again: same output file, same port
    local stats = H.tmpfile(".stats")
    local c2, _, err = H.denet({ "run", "-q", "-d", "1", "--offcpu", "--syscalls", "--prometheus",
      "127.0.0.1:" .. port, "-o", out, "--stats", stats, "--", H.fixture("sleeper"), "60" })
    assert.equals(143, c2, err)
    assert.equals("denet: serving metrics on http://127.0.0.1:" .. port .. "/metrics\n", err)
    local recs = records(out)
    assert.equals("metadata", recs[1].kind)
    assert.is_true(count_kind(recs, "tree") >= 5)
    assert.equals(1, count_kind(recs, "metadata"))
  end)
end)

describe("an output disk that fills up", function()
  it("one clear line, the command gets SIGTERM, and the records written stay whole", function()
    local dir = H.tmpdir()
    local script = string.format([[
      set -e
      mount -t tmpfs -o size=64k denet-full %s
      %s run -q -i 20 -o %s/out.jsonl --stats %s.kept/stats -- %s 60 || echo "rc=$?"
      cp %s/out.jsonl %s.kept/
    ]], H.quote(dir), H.quote(H.bin), H.quote(dir), H.quote(dir), H.quote(H.fixture("sleeper")),
      H.quote(dir), H.quote(dir))
    os.execute("mkdir -p " .. H.quote(dir .. ".kept"))
    local t0 = denet.clock()
    -- a mount namespace of its own: the tmpfs goes with it
    local code, out, err = H.sh("unshare -m sh -c " .. H.quote(script))
    assert.equals(0, code, err)
    assert.is_true(denet.clock() - t0 < 20, "it stopped")
    assert.equals("rc=143", out:match("rc=%d+"))
    local _, n = err:gsub("\n", "")
    assert.equals(1, n, err)
    assert.matches("^denet: cannot write .*out%.jsonl: No space left on device; stopping as on SIGTERM", err)
    local kept = dir .. ".kept/out.jsonl"
    local recs = records(kept) -- whole records only
    assert.is_true(#recs >= 10, "records " .. #recs)
    assert.equals("metadata", recs[1].kind)
    assert.equals("\n", H.slurp(kept):sub(-1))
    -- the run ended as a SIGTERM ends it: the summary says so
    local st = cjson.decode(H.slurp(dir .. ".kept/stats"))
    assert.equals(143, st.exit_code)
    assert.equals("SIGTERM", st.signal)
  end)
end)

describe("a plugin without end", function()
  it("that runs is stopped by its time budget and named, and the monitor goes on", function()
    local dir = H.tmpdir()
    H.write(dir .. "/spin.lua", [[
local P = { description = "loops forever on its third sample" }
local n = 0
function P.on_sample()
  n = n + 1
  if n == 3 then
    local x = 0
    while true do
      x = x + 1
    end
  end
end
return P
]])
    -- one that catches every error itself, in a loop
    H.write(dir .. "/sneaky.lua", [[
local P = { description = "swallows errors in a loop" }
function P.on_sample()
  while true do
    pcall(function()
      local x = 0
      for i = 1, 1e6 do x = x + i end
    end)
  end
end
return P
]])
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".json")
    local t0 = denet.clock()
    local code, _, err = H.denet({ "run", "-q", "-i", "100", "-d", "3", "--plugin-budget", "0.5", "--plugin-memory",
      "1024", "--plugin", dir .. "/spin.lua", "--plugin", dir .. "/sneaky.lua", "-o", out, "--stats", stats, "--",
      H.fixture("sleeper"), "30" })
    local took = denet.clock() - t0
    assert.equals(143, code, err)
    -- (the check comes every 10000 instructions: a hook stopped at its
    -- budget has run it, and a preemption more at most)
    assert.matches("plugin spin: stopped: [^\n]*spin%.lua:%d+: on_sample ran for 0%.[5-9] s %(budget 0%.5 s", err)
    assert.matches("plugin sneaky: stopped: [^\n]*sneaky%.lua:%d+: on_sample ran for 0%.[5-9] s", err)
    assert.is_true(took < 7, "took " .. took)
    -- samples kept coming: the 3 s run was sampled to its end, and every
    -- deadline of its schedule was sampled, or skipped while a plugin held
    -- the loop up (1 s of it: two hooks stopped at 0.5 s)
    local recs = records(out)
    local first, last
    for _, r in ipairs(recs) do
      if r.kind == "tree" then
        first = first or r.ts_ms
        last = last or r.ts_ms
        last = math.max(last, r.ts_ms)
      end
    end
    local s = cjson.decode(H.slurp(stats))
    local due = #H.deadlines(s.total_time_secs * 1000, 100, 1000)
    assert.equals(count_kind(recs, "tree"), s.sample_count)
    assert.is_true(math.abs(s.sample_count + s.samples_late - due) <= 1, string.format(
      "%d samples and %d late for %d deadlines", s.sample_count, s.samples_late, due))
    assert.is_true(s.samples_late <= due / 2, "late " .. s.samples_late)
    assert.is_true((last - first) / 1000 > 2.3, "sampled for " .. (last - first) / 1000)
  end)

  it("that allocates without end is stopped by the heap budget", function()
    -- no time budget: on a busy machine the allocation may outlast any
    -- time budget, and that budget would stop it first
    local hog = H.write(H.tmpdir() .. "/hog.lua", [[
local P = { description = "keeps everything" }
local kept = {}
function P.on_sample()
  for i = 1, 1e9 do
    kept[#kept + 1] = string.rep("x", 65536) .. i
  end
end
return P
]])
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".json")
    local code, _, err = H.denet({ "run", "-q", "-d", "3", "--plugin-budget", "0", "--plugin-memory", "128",
      "--plugin", hog, "-o", out, "--stats", stats, "--", H.fixture("sleeper"), "30" })
    assert.equals(143, code, err)
    assert.matches("^plugin hog: stopped: [^\n]*hog%.lua:4: on_sample grew the Lua heap past 128 MiB "
      .. "%(%-%-plugin%-memory%); disabled, the run goes on without it\n$", err)
    -- the run went on: every deadline after the hog's allocation (which
    -- holds the loop up as long as a busy machine makes it) was sampled,
    -- up to the end
    local s = cjson.decode(H.slurp(stats))
    local due = #H.deadlines(s.total_time_secs * 1000, 100, 1000)
    local recs = records(out)
    assert.equals(count_kind(recs, "tree"), s.sample_count)
    assert.is_true(math.abs(s.sample_count + s.samples_late - due) <= 1, string.format(
      "%d samples and %d late for %d deadlines", s.sample_count, s.samples_late, due))
    local first, last = math.huge, 0
    for _, r in ipairs(recs) do
      if r.kind == "tree" then
        first, last = math.min(first, r.ts_ms), math.max(last, r.ts_ms)
      end
    end
    assert.is_true((last - first) / 1000 > 2.3, "sampled for " .. (last - first) / 1000)
  end)
end)
