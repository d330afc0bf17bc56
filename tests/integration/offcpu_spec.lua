-- Off-CPU analysis on fixtures with known blocking: the time per thread and
-- category, the functions in the stacks, the filters, and the outputs.
local cjson = require("cjson")

local offcpu = H.offcpu

local function thread(report, comm, pick)
  local found = {}
  for _, t in ipairs(report.threads) do
    if t.comm == comm then
      found[#found + 1] = t
    end
  end
  table.sort(found, function(a, b)
    return a.tid < b.tid
  end)
  return found[pick or 1]
end

local function has_frame(report, tid, name)
  for _, s in ipairs(report.stacks) do
    if s.tid == tid then
      for _, f in ipairs(s.frames) do
        if f == name then
          return true
        end
      end
    end
  end
  return false
end

local function within(x, want, frac)
  return math.abs(x - want) <= want * frac
end

describe("denet script offcpu", function()
  it("a thread sleeping 10 x 50 ms: sleep ~500 ms, its function in the stack", function()
    -- (the fixture says how long its naps took, wake-up latency included)
    local took = H.tmpfile(".us")
    local r = offcpu({}, { H.fixture("sleep_loop"), "10", "50", took })
    local t = thread(r, "sleep_loop")
    local sleep = t.by_category.sleep or 0
    local slept = tonumber(H.slurp(took))
    assert.is_true(slept >= 500000, slept)
    -- what the kernel skipped is reported, as a count
    assert.is_number(r.missed_switches)
    assert.is_true(r.missed_switches >= 0)
    assert.is_true(r.blocks_seen >= 10, "blocks seen " .. tostring(r.blocks_seen))
    assert.is_true(H.sleeps_within(r, sleep, slept, 50000))
    assert.is_true(has_frame(r, t.tid, "nap"))
    -- kernel and user frames in one stack, user root first, "-" between
    local s = r.stacks[1]
    assert.equals("sleep", s.category)
    assert.equals("clock_nanosleep", s.syscall)
    local dash
    for i, f in ipairs(s.frames) do
      if f == "-" then
        dash = i
      end
    end
    assert.is_not_nil(dash)
    -- the whole user stack, from the entry point (walked from the unwind
    -- tables: glibc keeps no frame pointers)
    assert.equals("_start;__libc_start_main;__libc_start_call_main;main;nap;nap_syscall;__nanosleep;clock_nanosleep",
      table.concat(s.frames, ";", 1, dash - 1))
    assert.equals("__schedule", s.frames[#s.frames])
    local sys = r.syscalls[1]
    assert.equals("clock_nanosleep", sys.name)
    assert.equals(10, sys.blocks)
    -- nap_syscall(), glibc's caller, is recovered from glibc's call frame
    -- information (a frame pointer walk loses it)
    assert.matches("sleep_loop %(tid %d+%) spends %d+%% of its wall time sleeping in nap_syscall%(%) <%- nap%(%)",
      r.verdict)
    -- by frame pointers (--unwind fp), nap_syscall(), glibc's caller, is
    -- still recovered from glibc's call frame information
    r = offcpu({ "--unwind", "fp" }, { H.fixture("sleep_loop"), "10", "20" })
    assert.matches("sleeping in nap_syscall%(%) <%- nap%(%)", r.verdict)
    assert.is_nil(r.unwind)
    assert.is_number(r.leaf_unwind.before_rules)
  end)

  it("a process that execs late and exits before the next capture: its stacks name the new program's functions",
    function()
      -- sh waits for sleep (0.3 s: past the captures after the command's
      -- start and the first interval's), then becomes sleep_loop for 5 x 20
      -- ms, most often between two intervals' captures: only a capture at
      -- its exec sees its mappings, and what was captured of sh must not
      -- name its frames. Without bpf_task_pt_regs no unwind rule is looked
      -- up (a lookup that misses reads the mappings again), so the capture
      -- at exec is all there is.
      local argv = { "/bin/sh", "-c", "sleep 0.3; exec " .. H.quote(H.fixture("sleep_loop")) .. " 5 20" }
      for _, env in ipairs({ "", "DENET_DISABLE=task_pt_regs " }) do
        local code, out, err = H.denet({ "script", "offcpu", "--json", "--", unpack(argv) }, env)
        assert.equals(0, code, err)
        local r = cjson.decode(out)
        local t = thread(r, "sleep_loop")
        assert.is_not_nil(t, env)
        local naps, sleeps = 0, 0
        for _, s in ipairs(r.stacks) do
          -- a preemption inside the syscall is a wait for a CPU
          -- ("runqueue"), not one of the 5 sleeps
          if s.tid == t.tid and s.category == "sleep" and s.syscall == "clock_nanosleep"
            and s.comm == "sleep_loop" then
            sleeps = sleeps + s.count
            naps = naps + (table.concat(s.frames, ";"):find(";main;nap;", 1, true) and s.count or 0)
          end
        end
        assert.equals(5, sleeps, env)
        assert.equals(5, naps, env)
      end
    end)

  it("mutex contention: the waiter's lock time ~900 ms, the waiting function in the stack", function()
    local r = offcpu({}, { H.fixture("lock_wait"), "3", "300" })
    local w = thread(r, "waiter")
    assert.is_not_nil(w, "a thread named by pthread_setname_np")
    local lock = w.by_category.lock or 0
    assert.is_true(within(lock, 900000, 0.10), "lock " .. lock)
    assert.is_true(has_frame(r, w.tid, "wait_for_lock"))
    local site = r.sites[1].category == "lock" and r.sites[1] or r.sites[2]
    assert.equals("take_lock() <- wait_for_lock()", site.site)
  end)

  it("a pipe reader in a child process: ipc ~4 x 200 ms", function()
    local r = offcpu({}, { H.fixture("pipe_feed"), "4", "200" })
    local child = thread(r, "pipe_feed", 2) -- the child has the larger tid
    local ipc = child.by_category.ipc or 0
    assert.is_true(within(ipc, 800000, 0.10), "ipc " .. ipc)
    assert.is_true(has_frame(r, child.tid, "read_msg"))
    assert.is_true(child.pid ~= thread(r, "pipe_feed", 1).pid)
  end)

  it("denet run --offcpu and the script give the same figures: one descriptor, one classification", function()
    -- the child blocks 4 x 200 ms on the pipe (ipc), the parent sleeps
    -- as long (sleep): a pipe wait is told by its kernel frames, in both
    local r = offcpu({}, { H.fixture("pipe_feed"), "4", "200" })
    local script = {}
    for _, t in ipairs(r.threads) do
      for c, us in pairs(t.by_category) do
        script[c] = (script[c] or 0) + us
      end
    end
    local stats = H.tmpfile(".json")
    local code, _, err = H.denet({ "run", "-q", "--offcpu", "--stats", stats, "--", H.fixture("pipe_feed"), "4",
      "200" })
    assert.equals(0, code, err)
    local run = cjson.decode(H.slurp(stats)).ebpf.offcpu.by_category_ns
    for _, c in ipairs({ "ipc", "sleep" }) do
      assert.is_true(within(script[c] or 0, 800000, 0.10), c .. " (script) " .. tostring(script[c]))
      assert.is_true(within((run[c] or 0) / 1000, 800000, 0.10), c .. " (run) " .. tostring(run[c]))
    end
  end)

  it("recovers the caller a frame pointer walk loses in libc: sleep, read and lock through one layer", function()
    -- each of the 20 rounds blocks ~10 ms in each call; libc keeps no frame
    -- pointers, so the walk alone goes from the libc function to outer()
    local function time_in(r, tid, want)
      local with, total = 0, 0
      for _, s in ipairs(r.stacks) do
        if s.tid == tid and s.category == want.category then
          local names = table.concat(s.frames, ";")
          if names:find(";outer;", 1, true) and names:find(want.libc, 1, true) then
            total = total + s.us
            if names:find(";outer;" .. want.layer .. ";", 1, true) then
              with = with + s.us
            end
          end
        end
      end
      return with, total
    end
    local CALLS = {
      { category = "sleep", layer = "via_sleep", libc = "clock_nanosleep" },
      { category = "ipc", layer = "via_read", libc = "read" },
      { category = "lock", layer = "via_lock", libc = "__lll_lock_wait" },
    }
    local r = offcpu({}, { H.fixture("leaf_calls"), "20" })
    local main = thread(r, "leaf_calls")
    -- what to look at when it fails: the main thread's stacks
    local seen = {}
    for _, s in ipairs(r.stacks) do
      if s.tid == main.tid and #seen < 8 then
        seen[#seen + 1] = string.format("%s x%d %.0f us: %s", s.category, s.count, s.us, table.concat(s.frames, ";"))
      end
    end
    seen = table.concat(seen, "\n") .. "\nunwind: " .. cjson.encode(r.unwind or {})
    for _, c in ipairs(CALLS) do
      local with, total = time_in(r, main.tid, c)
      assert.is_true(total > 150000, string.format("%s: %d us in all\n%s", c.layer, total, seen))
      -- only a first block, before the rule for its IP is learnt, may lack it
      assert.is_true(with >= 0.85 * total, string.format("%s: %d of %d us", c.layer, with, total))
    end
    -- the lock is two libc functions deep: both are recovered (and the
    -- one inlined between them, from glibc's debug file)
    local found = false
    for _, s in ipairs(r.stacks) do
      found = found or table.concat(s.frames, ";"):find("via_lock;__pthread_mutex_lock;lll_mutex_lock_optimized;"
        .. "__lll_lock_wait", 1, true) ~= nil
    end
    assert.is_true(found)
    -- without the unwind rules (no bpf_task_pt_regs) the layer is not seen
    local code, out, err = H.denet({ "script", "offcpu", "--json", "--", H.fixture("leaf_calls"), "5" },
      "DENET_DISABLE=task_pt_regs ")
    assert.equals(0, code, err)
    r = cjson.decode(out)
    main = thread(r, "leaf_calls")
    for _, c in ipairs(CALLS) do
      local with, total = time_in(r, main.tid, c)
      assert.is_true(total > 30000 and with == 0, string.format("%s without rules: %d of %d us", c.layer, with, total))
    end
  end)

  it("reuses kernel stacks only where they are right: same read() call, pipe and socket in turn", function()
    -- one read() call site blocks alternately in a pipe and a unix socket:
    -- same syscall, same user stack, two kernel stacks; verify mode also
    -- walks every reused stack and counts disagreements
    for _, mode in ipairs({ "on", "verify" }) do
      local r = offcpu({ "--stack-reuse", mode }, { H.fixture("alt_read"), "40", "5" })
      local child = thread(r, "alt_read", 2)
      local pipe, sock = 0, 0
      for _, s in ipairs(r.stacks) do
        if s.tid == child.tid and s.category == "ipc" then
          local k = table.concat(s.frames, ";")
          if k:find("pipe_read") then
            pipe = pipe + s.count
          elseif k:find("unix_stream") then
            sock = sock + s.count
          end
        end
      end
      assert.equals(20, pipe, mode)
      assert.equals(20, sock, mode)
      local ku = r.kstack_reuse
      assert.is_true(ku.reused >= 20, cjson.encode(ku))
      assert.equals(0, ku.wrong)
    end
    local r = offcpu({ "--stack-reuse", "off" }, { H.fixture("sleep_loop"), "3", "10" })
    assert.is_nil(r.kstack_reuse)
    assert.is_nil(r.ustack_reuse)
  end)

  it("reuses user stacks only where they are right: one call, two callers with the same frame", function()
    -- step() blocks with the same registers from outer_a() and outer_b()
    -- in turn: only a word of the stack tells them apart
    for _, mode in ipairs({ "on", "verify" }) do
      local r = offcpu({ "--stack-reuse", mode }, { H.fixture("alt_callers"), "60" })
      local t = thread(r, "alt_callers")
      local a, b = 0, 0
      for _, s in ipairs(r.stacks) do
        if s.tid == t.tid and s.category == "sleep" then
          local k = table.concat(s.frames, ";")
          if k:find(";outer_a;", 1, true) then
            a = a + s.count
          elseif k:find(";outer_b;", 1, true) then
            b = b + s.count
          end
        end
      end
      -- never one caller's block under the other's name; every block under
      -- one but those before the unwind rules were learnt, and a stack the
      -- walk could not read, on a loaded machine
      local early = r.leaf_unwind and r.leaf_unwind.before_rules or 0
      assert.is_true(a <= 30 and b <= 30 and a + b + early + r.lost_stacks >= 60,
        string.format("%s: outer_a %d, outer_b %d, before the rules %d, lost %d", mode, a, b, early, r.lost_stacks))
      assert.is_true(a >= 1 and b >= 1, string.format("%s: outer_a %d, outer_b %d", mode, a, b))
      local uu = r.ustack_reuse
      assert.equals(0, uu.wrong, mode)
    end
    -- one call site of nanosleep and then another, in turn, in step(): the
    -- frame recovered below step differs, and verify mode unwinds it again
    -- at every reuse
    local r2 = offcpu({ "--stack-reuse", "verify" }, { H.fixture("alt_callers"), "60", "sites" })
    local t2 = thread(r2, "alt_callers")
    local n = 0
    for _, s in ipairs(r2.stacks) do
      if s.tid == t2.tid and s.category == "sleep" and table.concat(s.frames, ";"):find(";outer_a;step;", 1, true) then
        n = n + s.count
      end
    end
    -- every block has step but those before the unwind rules were learnt
    -- (one or two; more on a loaded or slow machine: counted) and those
    -- whose stack was lost
    local early = r2.leaf_unwind and r2.leaf_unwind.before_rules or 0
    assert.is_true(n + early + r2.lost_stacks >= 60,
      string.format("blocks with step %d, before the rules %d, lost %d", n, early, r2.lost_stacks))
    assert.is_true(n >= 1, "blocks with step: " .. n)
    -- each place is walked once (from the unwind tables: two places, two
    -- return addresses into step(); by frame pointers one), and blocks
    -- before the process's mappings were loaded are unwound from a copy
    local uu2 = r2.ustack_reuse
    local walked2 = r2.unwind and 2 + r2.unwind.copied or 1
    assert.is_true(uu2.reused + uu2.late + walked2 >= 60 and uu2.reused >= 1, cjson.encode(uu2))
    assert.equals(0, r2.ustack_reuse.wrong)
    -- a thread that blocks from one place reuses its stack: every block
    -- but the first, or walked before the learner put the template in
    -- place (one or two; more on a slow machine: counted)
    local r = offcpu({ "--stack-reuse", "verify" }, { H.fixture("sleep_loop"), "20", "2" })
    local uu = r.ustack_reuse
    local walked = 1 + (r.unwind and r.unwind.copied or 0)
    assert.is_true(uu.reused + uu.late + walked >= 20 and uu.reused >= 1, cjson.encode(uu))
    assert.equals(0, uu.wrong)
  end)

  it("an fsync-heavy writer waits for io; a busy loop is off-CPU < 5% of wall", function()
    local r = offcpu({}, { H.fixture("write_fsync"), H.tmpfile(".dat"), "16" })
    local t = thread(r, "write_fsync")
    assert.is_true((t.by_category.io or 0) > 0, cjson.encode(t.by_category))
    -- the fixture writes what the kernel counted for it (schedstat): on a
    -- loaded machine it waits for a CPU, which is runqueue, not blocking
    local ss = H.tmpfile(".schedstat")
    r = offcpu({}, { H.fixture("busy"), "1", ss })
    t = thread(r, "busy")
    local cpu_ns, runq_ns = H.slurp(ss):match("(%d+) (%d+)")
    cpu_ns, runq_ns = tonumber(cpu_ns), tonumber(runq_ns)
    assert.is_true(t.offcpu_us < 0.05 * t.wall_us, string.format("%d of %d", t.offcpu_us, t.wall_us))
    assert.is_true(math.abs(t.oncpu_us - cpu_ns / 1000) < 0.05 * cpu_ns / 1000,
      string.format("on-CPU %d us, schedstat %d us", t.oncpu_us, cpu_ns / 1000))
    local rq = (t.by_category.runqueue or 0)
    assert.is_true(math.abs(rq - runq_ns / 1000) < 0.1 * runq_ns / 1000 + 10000,
      string.format("runqueue %d us, schedstat %d us", rq, runq_ns / 1000))
  end)

  it("-m above the sleep length removes those blocks; -M below keeps none either", function()
    local r = offcpu({ "-m", "60000" }, { H.fixture("sleep_loop"), "5", "50" })
    local t = thread(r, "sleep_loop")
    assert.is_nil(t and t.by_category.sleep)
    local took = H.tmpfile(".us")
    r = offcpu({ "-m", "40000" }, { H.fixture("sleep_loop"), "5", "50", took })
    local sleep = thread(r, "sleep_loop").by_category.sleep
    assert.is_true(H.sleeps_within(r, sleep, tonumber(H.slurp(took)), 50000))
    r = offcpu({ "-M", "10000" }, { H.fixture("sleep_loop"), "5", "50" })
    t = thread(r, "sleep_loop")
    assert.is_nil(t and t.by_category.sleep)
  end)

  it("--state D keeps only uninterruptible (io) blocks", function()
    local r = offcpu({ "--state", "D" }, { H.fixture("write_fsync"), H.tmpfile(".dat"), "16" })
    assert.is_true(#r.stacks > 0)
    for _, s in ipairs(r.stacks) do
      assert.is_not.equals("sleep", s.category)
      assert.is_not.equals("runqueue", s.category)
    end
  end)

  it("writes folded stacks and a well-formed SVG naming the fixture's functions", function()
    local folded, svg = H.tmpfile(".folded"), H.tmpfile(".svg")
    local code, _, err = H.denet({ "script", "offcpu", "-f", folded, "--svg", svg, "--", H.fixture("sleep_loop"),
      "4", "30" })
    assert.equals(0, code, err)
    local n = 0
    for line in io.lines(folded) do
      local stack, value = line:match("^(.+) (%d+)$")
      assert.is_not_nil(stack, line)
      assert.is_true(tonumber(value) > 0)
      assert.matches("^sleep_loop;", stack)
      n = n + 1
    end
    assert.is_true(n >= 1)
    local text = H.slurp(svg)
    assert.matches("^<%?xml", text)
    assert.matches("</svg>%s*$", text)
    assert.matches("<title>nap %(", text)
    -- every tag that opens is closed
    local opens = select(2, text:gsub("<g>", ""))
    local closes = select(2, text:gsub("</g>", ""))
    assert.equals(opens, closes)
    local xmllint = H.sh("command -v xmllint")
    if xmllint == 0 then
      assert.equals(0, (H.sh("xmllint --noout " .. H.quote(svg))))
    end
  end)

  it("--stack-depth keeps the frames nearest the block; -U / -K one side only", function()
    local r = offcpu({ "--stack-depth", "2" }, { H.fixture("sleep_loop"), "3", "20" })
    for _, s in ipairs(r.stacks) do
      assert.is_true(#s.frames <= 5, #s.frames .. " frames")
      assert.equals("__schedule", s.frames[#s.frames])
    end
    r = offcpu({ "-U" }, { H.fixture("sleep_loop"), "3", "20" })
    for _, s in ipairs(r.stacks) do
      for _, f in ipairs(s.frames) do
        assert.is_not.equals("-", f)
        assert.is_not.equals("__schedule", f)
      end
    end
    r = offcpu({ "-K" }, { H.fixture("sleep_loop"), "3", "20" })
    assert.equals("__schedule", r.stacks[1].frames[#r.stacks[1].frames])
    for _, f in ipairs(r.stacks[1].frames) do
      assert.is_not.equals("nap", f)
    end
  end)

  it("shows missed stacks instead of dropping them", function()
    local r = offcpu({ "--stack-storage-size", "1" }, { H.fixture("lock_wait"), "2", "100" })
    assert.is_true(r.lost_stacks > 0)
    local missed = false
    for _, s in ipairs(r.stacks) do
      for _, f in ipairs(s.frames) do
        if f == "[Missed User Stack]" or f == "[Missed Kernel Stack]" then
          missed = true
        end
      end
    end
    assert.is_true(missed)
    -- the time is still all there
    assert.is_true(within(thread(r, "waiter").by_category.lock, 200000, 0.15))
  end)

  it("follows an existing process with -p", function()
    local out = H.tmpfile(".json")
    local sh = string.format(
      [[%s 600 100 & p=$!; comm $p sleep_loop; %s script offcpu --json -d 0.5 -p $p > %s; kill $p; wait $p]],
      H.quote(H.fixture("sleep_loop")), H.quote(H.bin), H.quote(out))
    H.sh("bash -c " .. H.quote(H.WAIT_SH .. sh))
    local r = cjson.decode(H.slurp(out))
    local t = thread(r, "sleep_loop")
    assert.is_not_nil(t)
    -- ~0.5 s of it was traced, all asleep in 100 ms naps: the nap in
    -- progress when tracing began counts from then, the one in progress
    -- at the end up to the end (the report's length is the traced
    -- window); it runs a few microseconds between naps, and a block ends
    -- when it is back on a CPU, however long a loaded machine makes it
    -- wait for one
    local sleep, traced = t.by_category.sleep or 0, r.duration_us
    local waited = sleep + (t.by_category.runqueue or 0)
    assert.is_true(waited >= 0.95 * traced and sleep <= traced,
      string.format("sleep %d us, runqueue %d us, of %d traced", sleep, waited - sleep, traced))
    assert.is_true(has_frame(r, t.tid, "nap"))
  end)

  it("adds per-sample off-CPU data to the monitor's stream with denet run --offcpu, the whole run's to the summary",
    function()
    local out, stats = H.tmpfile(".jsonl"), H.tmpfile(".stats")
    local code = H.denet({ "run", "-q", "--offcpu", "-o", out, "--stats", stats, "--", H.fixture("lock_wait"), "2",
      "200" })
    assert.equals(0, code)
    -- every sample has it; every deadline of the run was sampled, or
    -- counted late (the loop held up on a busy machine)
    local n, trees = 0, 0
    for line in io.lines(out) do
      local r = cjson.decode(line)
      if r.kind == "tree" then
        trees = trees + 1
        n = n + (r.aggregated.ebpf.offcpu and 1 or 0)
      end
    end
    local summary = cjson.decode(H.slurp(stats))
    local due = #H.deadlines(summary.total_time_secs * 1000, 100, 1000)
    assert.equals(trees, n)
    assert.equals(trees, summary.sample_count)
    assert.is_true(n >= 1 and math.abs(n + summary.samples_late - due) <= 1,
      string.format("%d samples and %d late for %d deadlines", n, summary.samples_late, due))
    local oc = summary.ebpf.offcpu
    local waiter
    for _, t in pairs(oc.thread_stats) do
      if t.comm == "waiter" then
        waiter = t
      end
    end
    assert.is_true(within(waiter.by_category.lock, 400e6, 0.1), "lock " .. waiter.by_category.lock)
    assert.is_true(oc.total_events >= 4)
    assert.is_true(oc.max_time_ns >= 199e6 and oc.min_time_ns > 0)
    local tops = {}
    for _, t in ipairs(oc.top_blocking_threads) do
      tops[t.comm] = true
    end
    assert.is_true(tops.waiter and tops.lock_wait)
  end)

  it("on a terminal says what it traces and how to stop, then keeps a status line; not otherwise", function()
    local steps = {
      { expect = [[Tracing off-CPU time of sleep_loop and its descendants for 2 s\.\.\. Hit Ctrl-C to end\.]] },
      -- the status line, rewritten in place: elapsed time, blocks, lost
      { expect = [[\r\x1b\[K +[0-9.]+ s  [1-9][0-9]* blocks seen  0 stacks lost]], timeout = 30 },
      { expect = "Verdict: sleep_loop", timeout = 30 },
    }
    local argv = { "/usr/bin/python3", H.source .. "/tests/tools/pty_drive.py", cjson.encode(steps), "--", H.bin,
      "script", "offcpu", "-d", "2", "--", H.fixture("sleep_loop"), "100", "100" }
    local q = {}
    for i, a in ipairs(argv) do
      q[i] = H.quote(a)
    end
    local code, out, err = H.sh(table.concat(q, " "))
    -- (-d ends the command with SIGTERM: its status is denet's)
    assert.equals(143, code, err .. out)
    -- the status line is cleared before the report
    assert.matches("\r\27%[KOff%-CPU time over", out)
    -- not on a terminal: the report alone
    local c2, out2, err2 = H.denet({ "script", "offcpu", "--", H.fixture("sleep_loop"), "5", "100" })
    assert.equals(0, c2, err2)
    assert.equals("", err2)
    assert.matches("^Off%-CPU time over", out2)
  end)

  it("machine-wide, leaves denet's own threads out", function()
    local out = H.tmpfile(".json")
    local p = require("denet").spawn({ H.bin, "script", "offcpu", "--json", "-d", "1" }, { stdout = out }):resume()
    assert.equals(0, p:wait())
    local r = cjson.decode(H.slurp(out))
    assert.is_true(#r.threads > 0)
    for _, t in ipairs(r.threads) do
      assert.is_true(t.pid ~= p.pid, "denet's thread " .. t.tid .. " in the report")
    end
    assert.is_nil(r.verdict:find("(tid " .. p.pid .. ")", 1, true), r.verdict)
  end)

  it("machine-wide: kernel threads are shown but not in the verdict, nor counted as missed stacks", function()
    local function machine(extra)
      local args = { "script", "offcpu", "--json", "-d", "1" }
      for _, a in ipairs(extra or {}) do
        args[#args + 1] = a
      end
      local code, out, err = H.denet(args)
      assert.equals(0, code, err)
      return cjson.decode(out)
    end
    local r = machine()
    local kernel, by_tid = 0, {}
    for _, t in ipairs(r.threads) do
      by_tid[t.tid] = t
      kernel = kernel + (t.kernel and 1 or 0)
    end
    assert.is_true(kernel > 0, "kernel threads seen")
    local vt = tonumber(r.verdict:match("%(tid (%d+)%)"))
    assert.is_true(vt == nil or not by_tid[vt].kernel, r.verdict)
    -- a kernel thread has no user stack: that is no miss
    for _, s in ipairs(r.stacks) do
      if by_tid[s.tid] and by_tid[s.tid].kernel then
        assert.is_nil(table.concat(s.frames, ";"):find("Missed User Stack", 1, true))
      end
    end
    -- bcc's offcputime flags
    r = machine({ "--kernel-threads-only" })
    assert.is_true(#r.threads > 0)
    for _, t in ipairs(r.threads) do
      assert.is_true(t.kernel, t.comm)
    end
    r = machine({ "--user-threads-only" })
    for _, t in ipairs(r.threads) do
      assert.is_nil(t.kernel, t.comm)
    end
  end)

  -- blocked_now's three threads, blocked before tracing begins: name ->
  -- { tid, since (CLOCK_MONOTONIC s), fn, category }
  local BLOCKED = { piper = { fn = "wait_pipe", category = "ipc" }, locker = { fn = "wait_lock", category = "lock" },
    napper = { fn = "wait_nap", category = "sleep" } }

  local function start_blocked(secs)
    local out = H.tmpfile(".out")
    local p = require("denet").spawn({ H.fixture("blocked_now"), tostring(secs) }, { stdout = out }):resume()
    H.sh("bash -c " .. H.quote(H.WAIT_SH .. "lines " .. H.quote(out) .. " 3"))
    local got = {}
    for line in io.lines(out) do
      local name, tid, since = line:match("^blocked (%S+) (%d+) (%S+)")
      got[name] = { tid = tonumber(tid), since = tonumber(since), fn = BLOCKED[name].fn,
        category = BLOCKED[name].category }
      -- until it is asleep in its blocking call
      H.sh("bash -c " .. H.quote(H.WAIT_SH .. string.format("state %d/task/%s S", p.pid, tid)))
    end
    return p, got
  end

  local function stack_of(r, tid)
    for _, s in ipairs(r.stacks) do
      if s.tid == tid then
        return s
      end
    end
  end

  it("threads blocked before tracing began: their whole time in the window, category and function (-p, "
    .. "machine-wide)", function()
    local p, got = start_blocked(60)
    local function check(r, how)
      local by_tid = H.by_tid(r.threads)
      for name, b in pairs(got) do
        local t = by_tid[b.tid]
        assert.is_not_nil(t, how .. ": " .. name .. " not in the report")
        -- blocked all along: every bit of its traced wall time, in its category
        local off = t.by_category[b.category] or 0
        assert.is_true(off >= 0.99 * t.wall_us and t.wall_us >= 0.8 * r.duration_us, string.format(
          "%s %s: %s %d us of %d wall, %d traced", how, name, b.category, off, t.wall_us, r.duration_us))
        assert.is_true(has_frame(r, b.tid, b.fn), how .. ": " .. b.fn)
        -- the block began before tracing: it is longer than the window
        assert.is_true(stack_of(r, b.tid).max_us > t.wall_us, how .. ": " .. name .. "'s block length")
      end
    end
    local _
    local code, out, err = H.denet({ "script", "offcpu", "--json", "-d", "1", "-p", tostring(p.pid) })
    assert.equals(0, code, err)
    check(cjson.decode(out), "-p")
    code, out, err = H.denet({ "script", "offcpu", "--json", "-d", "1" })
    assert.equals(0, code, err)
    check(cjson.decode(out), "machine-wide")
    -- the monitor attached with --offcpu: blocked all along, at every sample
    local jsonl = H.tmpfile(".jsonl")
    code, _, err = H.denet({ "attach", "-q", "--offcpu", "-d", "1", "-o", jsonl, tostring(p.pid) })
    assert.equals(0, code, err)
    local recs = {}
    for _, rec in ipairs(H.jsonl(jsonl)) do
      if rec.kind == "tree" then
        recs[#recs + 1] = rec
      end
    end
    assert.is_true(#recs >= 2)
    local first, last = recs[1], recs[#recs]
    local locker = last.aggregated.ebpf.offcpu.thread_stats[p.pid .. ":" .. got.locker.tid]
    assert.is_not_nil(locker)
    local span_ns = (last.ts_ms - first.ts_ms) * 1e6
    assert.is_true(locker.by_category.lock >= 0.98 * span_ns, string.format("lock %d ns over samples %d ns apart",
      locker.by_category.lock, span_ns))
    p:kill()
    p:wait()
  end)

  it("--now: state, stacks, category and how long each thread has been blocked (within 10%)", function()
    local core = require("denet.core")
    local p, got = start_blocked(60)
    -- blocked a while before the snapshot
    H.sh("sleep 1")
    local before = core.monotonic()
    local code, out, err = H.denet({ "script", "offcpu", "--now", "--json", "-p", tostring(p.pid) })
    local after = core.monotonic()
    assert.equals(0, code, err)
    local r = cjson.decode(out)
    assert.equals("offcpu_now", r.kind)
    local by_tid = H.by_tid(r.threads)
    for name, b in pairs(got) do
      local t = by_tid[b.tid]
      assert.is_not_nil(t, name)
      assert.equals("S", t.state)
      assert.equals(b.category, t.category)
      -- the snapshot was taken between before and after
      local lo, hi = (before - b.since) * 1e6, (after - b.since) * 1e6
      assert.is_true(t.blocked_for_us >= 0.9 * lo and t.blocked_for_us <= 1.1 * hi,
        string.format("%s blocked for %d us, truth %d..%d", name, t.blocked_for_us, lo, hi))
      local frames = table.concat(t.frames, ";")
      assert.truthy(frames:find(";" .. b.fn .. ";", 1, true), frames)
      assert.matches(b.fn .. "%(%)", t.site)
    end
    assert.matches("has been", r.verdict)
    -- without task iterators: /proc's kernel stack, the user stack from the
    -- stack pointer alone (its leaf frames)
    before = core.monotonic()
    code, out, err = H.denet({ "script", "offcpu", "--now", "--json", "-t", tostring(got.locker.tid) },
      "DENET_DISABLE=task_iter ")
    after = core.monotonic()
    assert.equals(0, code, err)
    r = cjson.decode(out)
    assert.equals(1, #r.threads)
    local t = r.threads[1]
    assert.equals("lock", t.category)
    assert.equals("futex", t.syscall)
    assert.matches("wait_lock%(%)", t.site)
    local lo, hi = (before - got.locker.since) * 1e6, (after - got.locker.since) * 1e6
    assert.is_true(t.blocked_for_us >= 0.9 * lo and t.blocked_for_us <= 1.1 * hi)
    -- the text: a table, the verdict, each stack
    code, out = H.denet({ "script", "offcpu", "--now", "-p", tostring(p.pid) })
    assert.equals(0, code)
    assert.matches("BLOCKED FOR", out)
    assert.matches("Verdict: ", out)
    assert.matches("Thread " .. got.locker.tid .. " %(locker%)", out)
    -- machine-wide: denet itself is left out
    local snap = H.tmpfile(".json")
    local d = require("denet").spawn({ H.bin, "script", "offcpu", "--now", "--json" }, { stdout = snap }):resume()
    assert.equals(0, d:wait())
    r = cjson.decode(H.slurp(snap))
    local seen = false
    for _, th in ipairs(r.threads) do
      assert.is_true(th.pid ~= d.pid, "denet's own thread in the snapshot")
      seen = seen or th.tid == got.napper.tid
    end
    assert.is_true(seen)
    assert.is_nil(r.verdict:find("(tid " .. d.pid .. ")", 1, true), r.verdict)
    p:kill()
    p:wait()
    -- what --now does not take
    local _
    code, _, err = H.denet({ "script", "offcpu", "--now", "-d", "1" })
    assert.equals(2, code)
    assert.matches("%-%-now takes no %-%-duration", err)
    code, _, err = H.denet({ "script", "offcpu", "--now", "--", "true" })
    assert.equals(2, code)
    assert.matches("not a command", err)
  end)

  it("on-CPU time is measured: a spinning thread's is its own schedstat's (within 5%)", function()
    local out = H.tmpfile(".out")
    local json = H.tmpfile(".json")
    local code = H.sh(string.format("%s script offcpu --json -- %s 0.2 1.5 > %s 2>/dev/null; echo $? >> %s",
      H.quote(H.bin), H.quote(H.fixture("blocked_now")), H.quote(json), H.quote(out)))
    assert.equals(0, code)
    -- the fixture's own stdout goes into the same file
    local r = cjson.decode(H.slurp(json):match("{[^\n]+"))
    local tid, ns = H.slurp(json):match("spun (%d+) (%d+)")
    assert.is_not_nil(tid, "the spinner's line")
    local t = H.by_tid(r.threads)[tonumber(tid)]
    assert.is_not_nil(t)
    assert.is_true(t.oncpu_measured)
    local want = tonumber(ns) / 1000
    assert.is_true(math.abs(t.oncpu_us - want) <= 0.05 * want, string.format("on-CPU %d us, schedstat %d us",
      t.oncpu_us, want))
  end)

  it("rejects bad input with one line, exit 2", function()
    local code, _, err = H.denet({ "script", "offcpu", "-p", "999999" })
    assert.equals(2, code)
    assert.matches("no such process: 999999", err)
    code, _, err = H.denet({ "script", "offcpu", "--state", "Q", "--", "true" })
    assert.equals(2, code)
    assert.matches("unknown task state 'Q'", err)
    code, _, err = H.denet({ "script", "offcpu", "--frob" })
    assert.equals(2, code)
    assert.matches("unknown argument '%-%-frob'", err)
  end)
end)
