-- The event loop's contract when callbacks wait: a callback that sleeps
-- runs the loop nested, without its own source (never re-entered), at
-- most core.LOOP_MAX_DEPTH deep; what arrives for a held source is
-- delivered afterwards or counted lost; a source closed from a callback
-- is not freed while any frame of the loop holds it (the sanitizer build
-- runs these too).
local cjson = require("cjson")
local ffi = require("ffi")
local core = require("denet.core")
local denet = require("denet")
local BPF = require("denet.bpf")
local plugins = require("denet.plugins")

local NR_GETPPID = H.nr("getppid")

-- A program that sends one record per getppid of TARGET, numbered.
local function program(output_decl, submit)
  return [[
struct event_t { u32 pid; u32 seq; };
]] .. output_decl .. [[

BPF_ARRAY(seqs, u32, 1);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
  if ((bpf_get_current_pid_tgid() >> 32) != TARGET || args->id != NR) return 0;
  int z = 0;
  u32 *s = seqs.lookup(&z);
  if (!s) return 0;
  struct event_t e = { .pid = TARGET, .seq = *s };
  (*s)++;
  ]] .. submit .. [[;
  return 0;
}
]]
end

-- getppid_n N under the program; returns the process and the program.
local function traced(n, src)
  local p = denet.spawn({ H.fixture("getppid_n"), tostring(n) })
  local b = BPF.new{ text = src, cflags = { "-DTARGET=" .. p.pid, "-DNR=" .. NR_GETPPID } }
  return p, b
end

describe("a callback that waits", function()
  it("of a plugin's on_process: every process event once, the hook never re-entered", function()
    local log = H.tmpfile(".log")
    local nest = H.script(string.format([[
local core = require("denet.core")
local denet = require("denet")
local root
local n = { fork = 0, exit = 0, exec = 0 }
local calls, deepest = 0, 0
return { description = "sleeps in on_process",
  on_start = function(t) root = t.pid end,
  on_process = function(e)
    calls = calls + 1
    deepest = math.max(deepest, core.loop_depth())
    if e.pid ~= root then n[e.kind] = n[e.kind] + 1 end
    denet.sleep(0.01)
  end,
  on_end = function()
    local f = assert(io.open(%q, "w"))
    f:write(require("cjson").encode({ n = n, calls = calls, deepest = deepest }))
    f:close()
  end }
]], log))
    local stats = H.tmpfile(".json")
    local code, _, err = H.denet({ "run", "-q", "--plugin", nest, "--stats", stats, "--", H.fixture("fork_burn"),
      "50", "0" })
    assert.equals(0, code, err)
    assert.equals("", err)
    local got = cjson.decode(H.slurp(log))
    local lost = cjson.decode(H.slurp(stats)).lost_events
    assert.is_number(lost)
    -- 50 children forked and exited: each event reached the hook, or the
    -- kernel's buffer dropped it and the summary counts it
    assert.is_true(got.n.fork + got.n.exit + lost >= 100, H.slurp(log) .. " lost " .. lost)
    assert.is_true(got.n.fork <= 50 and got.n.exit <= 50, H.slurp(log))
    -- always called from the run's own loop, never from inside its sleep
    assert.equals(1, got.deepest)
  end)

  it("of a ring buffer: every record once and in order, the buffer never consumed from inside itself", function()
    local p, b = traced(20, program("BPF_RINGBUF_OUTPUT(events, 8);", "events.ringbuf_output(&e, sizeof(e), 0)"))
    local seqs, depths = {}, {}
    local buf = b:get_table("events"):open_ring_buffer(function(e)
      seqs[#seqs + 1] = e.seq
      depths[core.loop_depth()] = true
      denet.sleep(0.005)
    end)
    p:resume()
    assert.equals(0, p:wait())
    assert.is_true(denet.wait(function()
      return #seqs >= 20
    end, 10))
    local want = {}
    for i = 0, 19 do
      want[#want + 1] = i
    end
    assert.same(want, seqs)
    assert.same({ [1] = true }, depths)
    assert.equals(0, buf:lost())
    b:close()
  end)

  it("of a perf buffer that closes its own buffer: no record after the close, the loop goes on", function()
    local p, b = traced(20, program("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, sizeof(e))"))
    local calls = 0
    local buf
    buf = b:get_table("events"):open_perf_buffer(function()
      calls = calls + 1
      buf:close()
      denet.sleep(0.01) -- waits with its source closed and held
    end)
    local ticks = 0
    local t = denet.every(0.01, function()
      ticks = ticks + 1
    end)
    p:resume()
    assert.equals(0, p:wait())
    denet.sleep(0.2)
    t:close()
    assert.equals(1, calls)
    assert.is_true(ticks >= 5, "ticks " .. ticks)
    b:close()
  end)

  it("closing a source whose callback an outer frame runs frees it only after", function()
    -- timer a's callback sleeps; inside, timer b's callback closes a
    local order = {}
    local a, b
    a = denet.every(0.01, function()
      order[#order + 1] = "a"
      denet.sleep(0.05)
      order[#order + 1] = "a done"
    end)
    b = denet.after(0.02, function()
      order[#order + 1] = "b closes a"
      a:close()
    end)
    denet.sleep(0.2)
    assert.same({ "a", "b closes a", "a done" }, order)
    b:close()
  end)

  it("nests at most LOOP_MAX_DEPTH deep, then fails with one line naming the hook", function()
    assert.equals(4, denet.LOOP_MAX_DEPTH)
    -- four plugins whose on_interval sleeps once: each fires inside the
    -- sleep of the one before (its own timer is held meanwhile), and the
    -- fourth runs 4 deep, where waiting is refused
    local lines = {}
    local out = { write = function(_, s)
      lines[#lines + 1] = s
    end }
    local depths = {}
    local list = {}
    for i = 1, 4 do
      local slept = false
      list[i] = plugins.from_table({ interval = 0.02, on_interval = function()
        if not slept then
          slept = true
          depths[#depths + 1] = core.loop_depth()
          denet.sleep(0.3)
        end
      end }, "/x/p" .. i .. ".lua", {})
    end
    local host = plugins.host(list, out, { budget = 0 })
    host:start_intervals()
    denet.sleep(0.1)
    host:stop_intervals()
    table.sort(depths)
    assert.same({ 1, 2, 3, 4 }, depths)
    local failed = table.concat(lines)
    assert.matches("^plugin p%d: denet%.sleep in on_interval %(plugin p%d%): callbacks already wait 4 deep inside "
      .. "the event loop %(at most 4%)", failed)
    assert.equals(1, select(2, failed:gsub("\n", "")), failed)
  end)

  -- A tracer reads them while the processes it follows start and exit:
  -- parsing /proc/kallsyms takes a second or more on a slow machine, and
  -- a loop stopped that long misses whole short-lived processes.
  it("reads the kernel's symbols on a thread of their own: starting costs a fraction of a read, the table is the same",
    function()
      local t0 = core.monotonic()
      local inline = core.ksyms()
      local read_s = core.monotonic() - t0
      local start_s = math.huge
      local threaded
      for _ = 1, 3 do
        t0 = core.monotonic()
        assert.is_true(core.ksyms_start())
        -- (a second start while one reads is the same read)
        assert.is_true(core.ksyms_start())
        start_s = math.min(start_s, core.monotonic() - t0)
        threaded = core.ksyms()
      end
      assert.is_true(start_s < read_s / 5, string.format("start %.6f s, a read %.6f s", start_s, read_s))
      -- the same names at the addresses of a few functions the kernel has
      -- (64-bit addresses: a double would round them)
      local function u64(hex)
        return ffi.cast("uint64_t", tonumber(hex:sub(1, -9), 16)) * 2 ^ 32 + tonumber(hex:sub(-8), 16)
      end
      local text = core.read_file("/proc/kallsyms", 64 * 2 ^ 20)
      local n = 0
      for addr, name in text:gmatch("(%x+) [Tt] ([%w_]+)\n") do
        n = n + 1
        if n % 997 == 0 then
          assert.equals(inline:resolve(u64(addr)), threaded:resolve(u64(addr)), name)
        end
      end
      assert.is_true(n > 1000, "text symbols: " .. n)
      assert.equals("schedule", (threaded:resolve(u64(text:match("(%x+) T schedule\n")))))
    end)
end)
