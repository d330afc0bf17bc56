-- Real BPF: ring and perf buffers deliver every record, typed, and count
-- what they drop.
local denet = require("denet")
local BPF = require("denet.bpf")

local NR_GETPPID = H.nr("getppid")

local function program(output_decl, submit)
  return [[
struct event_t { u32 pid; u32 seq; u64 ts; char pad[40]; };
]] .. output_decl .. [[

BPF_ARRAY(seqs, u32, 1);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
  if ((bpf_get_current_pid_tgid() >> 32) != TARGET) return 0;
  if (args->id != NR) return 0;
  int z = 0;
  u32 *s = seqs.lookup(&z);
  if (!s) return 0;
  struct event_t e = {};
  e.pid = TARGET;
  e.seq = *s;
  e.ts = bpf_ktime_get_ns();
  (*s)++;
  ]] .. submit .. [[;
  return 0;
}
]]
end

-- Run getppid_n M with the program; poll while it runs unless told not to.
local function run(m, src, open, opts)
  local argv = { H.fixture("getppid_n"), tostring(m) }
  if opts and opts.pause_then then
    -- a perf buffer reports a loss only when it next writes a record, and
    -- its buffers are per CPU: the calls after the burst must be made on
    -- the CPU whose buffer overflowed: pinned to the first CPU this
    -- process may run on
    local f = assert(io.open("/proc/self/status"))
    local cpu = assert(f:read("*a"):match("\nCpus_allowed_list:%s*(%d+)"))
    f:close()
    argv = { "taskset", "-c", cpu, argv[1], argv[2], "stop", tostring(opts.pause_then) }
  end
  local p = denet.spawn(argv)
  local b = BPF.new{ text = src, cflags = { "-DTARGET=" .. p.pid, "-DNR=" .. NR_GETPPID } }
  local got = { n = 0, seqs = {}, pid_ok = true, sizes = {} }
  local buf = open(b, function(e, size)
    got.n = got.n + 1
    got.seqs[#got.seqs + 1] = e.seq
    got.sizes[size] = true
    if e.pid ~= p.pid then
      got.pid_ok = false
    end
  end)
  p:resume()
  if opts and opts.pause_then then
    -- let the burst overflow the buffer (nothing is read meanwhile): the
    -- fixture stops itself after it; drain the buffer, then let it make
    -- the calls that write the loss record
    local core = require("denet.core")
    local deadline = denet.clock() + 20
    while select(4, core.read_stat(p.pid)) ~= string.byte("T") and denet.clock() < deadline do
      os.execute("sleep 0.01")
    end
    local state = select(4, core.read_stat(p.pid))
    if state ~= string.byte("T") then
      p:kill(denet.SIGKILL) -- leave no fixture behind
    end
    assert.equals(string.byte("T"), state, "the fixture stops after its burst")
    while denet.poll(0.05) > 0 do
    end
    p:kill(18) -- SIGCONT
  elseif opts and opts.no_poll then
    -- let the child finish without draining, so small buffers overflow
    while not p:try_wait() do
      os.execute("sleep 0.01")
    end
  end
  p:wait()
  -- drain what is left
  while denet.poll(0.05) > 0 do
  end
  local lost = buf:lost()
  b:close()
  return got, lost
end

local function in_order(seqs)
  for i, s in ipairs(seqs) do
    if s ~= i - 1 then
      return false
    end
  end
  return true
end

describe("ring buffer", function()
  it("delivers exactly M typed records, in order", function()
    -- room for all 5000 (72 bytes each): none is lost even when a loaded
    -- machine keeps the reader off the CPU while the fixture runs
    local got, lost = run(5000, program("BPF_RINGBUF_OUTPUT(events, 128);",
      "events.ringbuf_output(&e, sizeof(e), 0)"), function(b, cb)
      return b:get_table("events"):open_ring_buffer(cb)
    end)
    assert.equals(5000, got.n)
    assert.is_true(got.pid_ok)
    assert.is_true(in_order(got.seqs))
    assert.same({ [56] = true }, got.sizes)
    assert.equals(0, lost)
  end)

  it("counts records dropped by a full buffer: received + lost = M", function()
    local got, lost = run(2000, program("BPF_RINGBUF_OUTPUT(events, 1);",
      "events.ringbuf_output(&e, sizeof(e), 0)"), function(b, cb)
      return b:get_table("events"):open_ring_buffer(cb)
    end, { no_poll = true })
    assert.is_true(got.n > 0 and got.n < 2000, "received " .. got.n)
    assert.is_true(lost > 0)
    assert.equals(2000, got.n + lost)
  end)

  it("counts failed ringbuf_reserve calls too", function()
    local got, lost = run(2000, program("BPF_RINGBUF_OUTPUT(events, 1);", [[
  struct event_t *r = events.ringbuf_reserve(sizeof(struct event_t));
  if (!r) return 0;
  __builtin_memcpy(r, &e, sizeof(e));
  events.ringbuf_submit(r, 0)]]), function(b, cb)
      return b:get_table("events"):open_ring_buffer(cb, { type = "struct { uint32_t pid; uint32_t seq; }" })
    end, { no_poll = true })
    assert.is_true(lost > 0)
    assert.equals(2000, got.n + lost)
  end)
end)

describe("perf buffer", function()
  it("delivers exactly M typed records, in order", function()
    local got, lost = run(5000, program("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, sizeof(e))"),
      function(b, cb)
        -- room for all 5000 on one CPU, as above
        return b:get_table("events"):open_perf_buffer(cb, { page_cnt = 128 })
      end)
    assert.equals(5000, got.n)
    assert.is_true(got.pid_ok)
    assert.is_true(in_order(got.seqs))
    assert.equals(0, lost)
  end)

  it("counts records the kernel dropped: received + lost = M", function()
    local lost_cb_total = 0
    local got, lost = run(3000, program("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, sizeof(e))"),
      function(b, cb)
        return b:get_table("events"):open_perf_buffer(cb, {
          page_cnt = 1,
          lost_cb = function(n)
            lost_cb_total = lost_cb_total + n
          end,
        })
      end, { pause_then = 1 })
    assert.is_true(lost > 0)
    assert.equals(lost, lost_cb_total)
    assert.equals(3001, got.n + lost)
  end)
end)

describe("callback errors", function()
  it("propagate out of the loop with the callback's file:line", function()
    local p = denet.spawn({ H.fixture("getppid_n"), "10" })
    local b = BPF.new{ text = program("BPF_RINGBUF_OUTPUT(events, 8);", "events.ringbuf_output(&e, sizeof(e), 0)"),
      cflags = { "-DTARGET=" .. p.pid, "-DNR=" .. NR_GETPPID } }
    local buf = b:get_table("events"):open_ring_buffer(function()
      error("boom in callback")
    end)
    p:resume()
    -- the records may be read while waiting, or once it has exited
    local ok, err = pcall(function()
      p:wait()
      denet.poll(1000)
    end)
    assert.is_false(ok)
    assert.matches("events_spec.lua:%d+: boom in callback", err)
    -- the records after the failing one stay unread until the buffer closes
    buf:close()
    assert.equals(0, p:wait())
    b:close()
  end)
end)
