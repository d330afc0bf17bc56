-- Ctrl-C ends every script: SIGINT/SIGTERM during a blocking call raise
-- the interrupt error, pcall'd cleanup and on_end run, outputs are
-- flushed, the exit code is 128+signal; a second signal exits at once
-- and leaves no BPF program loaded.
local denet = require("denet")

-- Run `denet script FILE ARGS` in the background; stdout and stderr go to
-- files. Returns the process and the two paths.
local function start(text, args)
  local f = H.script(text)
  local out, err = H.tmpfile(".out"), H.tmpfile(".err")
  local argv = { H.bin, "script", f }
  for _, a in ipairs(args or {}) do
    argv[#argv + 1] = a
  end
  local p = denet.spawn(argv, { stdout = out, stderr = err }):resume()
  return p, out, err
end

-- Wait (up to 60 s: a BPF compile on a busy machine) until the file at
-- path contains `want`.
local function wait_for(path, want, p)
  local deadline = denet.clock() + 60
  while not H.slurp(path):find(want, 1, true) do
    assert(denet.clock() < deadline, "timed out waiting for '" .. want .. "' in " .. path)
    assert(p:try_wait() == false, "the script ended early: " .. H.slurp(path))
    denet.sleep(0.01)
  end
end

-- Wait until the script's main thread blocks in denet's event loop
-- (epoll: denet.sleep, Proc:wait, perf_buffer_poll). A script writes
-- "ready" a few Lua lines before its pcall'd wait; a signal sent in
-- between would interrupt those lines, outside the pcall.
local function wait_blocked(p)
  local deadline = denet.clock() + 60
  while H.slurp("/proc/" .. p.pid .. "/wchan") ~= "do_epoll_wait" do
    assert(denet.clock() < deadline, "never blocked in epoll_wait")
    assert(p:try_wait() == false, "the script ended early")
    denet.sleep(0.005)
  end
end

-- Send sig and wait for the exit; returns the code and the seconds it took.
local function stop(p, sig)
  local t0 = denet.clock()
  p:kill(sig)
  local code = p:wait{ timeout = 10 }
  return code, denet.clock() - t0
end

local function loaded(name)
  local _, out = H.sh("bpftool prog show name " .. name)
  return out ~= ""
end

-- events: one perf record per getppid() of this process
local PERF_PROG = [[
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
  if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
  u64 v = 7;
  events.perf_submit(args, &v, sizeof(v));
  return 0;
}
]]

describe("Ctrl-C", function()
  it("stops a bcc script looping on perf_buffer_poll within a second, with its output", function()
    for _, sig in ipairs({ denet.SIGINT, denet.SIGTERM }) do
      local p, out, err = start([==[
local ffi = require("ffi")
pcall(ffi.cdef, "int getppid(void); int getpid(void);")
return function(BPF)
  local b = BPF:new{ text = (]==] .. string.format("%q", PERF_PROG) .. [==[):gsub("PID", ffi.C.getpid()) }
  b:get_table("events"):open_perf_buffer(function(cpu, ev)
    print("event " .. tonumber(ev[0]))
  end, "uint64_t")
  for _ = 1, 3 do ffi.C.getppid() end
  b:perf_buffer_poll(1000)
  io.stderr:write("ready\n")
  while true do
    b:perf_buffer_poll(1000)
  end
end
]==])
      wait_for(err, "ready", p)
      local code, took = stop(p, sig)
      assert.equals(128 + sig, code)
      assert.is_true(took < 1, "took " .. took .. " s")
      -- stdout is a file (fully buffered): flushed on the way out
      assert.equals("event 7\nevent 7\nevent 7\n", H.slurp(out))
      assert.equals("ready\n", H.slurp(err))
    end
  end)

  it("ends perf_buffer_poll_loop, and the script goes on to print what it gathered", function()
    local p, out, err = start([==[
return function(BPF)
  local b = BPF:new{ text = "BPF_PERF_OUTPUT(events);" }
  b:get_table("events"):open_perf_buffer(function() end, "uint64_t")
  io.stderr:write("ready\n")
  local ok, e = b:perf_buffer_poll_loop()
  print("loop ended", ok, tostring(e))
end
]==])
    wait_for(err, "ready", p)
    wait_blocked(p)
    local code, took = stop(p, denet.SIGINT)
    assert.equals(130, code)
    assert.is_true(took < 1, "took " .. took .. " s")
    assert.equals("loop ended\tfalse\tinterrupted\n", H.slurp(out))
  end)

  it("interrupts denet.sleep; pcall'd cleanup runs and the error goes on", function()
    local p, out, err = start([==[
local denet = require("denet")
io.stderr:write("ready\n")
local ok, e = pcall(denet.sleep, 60)
print("cleanup", ok, tostring(e), e.signal)
error(e, 0)
]==])
    wait_for(err, "ready", p)
    wait_blocked(p)
    local code = stop(p, denet.SIGTERM)
    assert.equals(143, code)
    assert.equals("cleanup\tfalse\tinterrupted\t15\n", H.slurp(out))
    assert.equals("ready\n", H.slurp(err))
  end)

  it("interrupts Proc:wait and passes the signal on to the command", function()
    local p, out, err = start([==[
local denet = require("denet")
local c = denet.spawn({ arg[1], "60" }):resume()
print(c.pid)
io.stdout:flush()
io.stderr:write("ready\n")
local ok, e = pcall(c.wait, c)
print(tostring(e), c:wait())
error(e, 0)
]==], { H.fixture("sleeper") })
    wait_for(err, "ready", p)
    wait_blocked(p)
    local code, took = stop(p, denet.SIGTERM)
    assert.equals(143, code)
    assert.is_true(took < 1, "took " .. took .. " s")
    -- the command got the SIGTERM too: its wait returned 128+15
    local pid, msg, ccode = H.slurp(out):match("^(%d+)\n(%S+)\t(%d+)")
    assert.is_not_nil(pid, H.slurp(out))
    assert.equals("interrupted", msg)
    assert.equals("143", ccode)
  end)

  it("interrupts a wait for the next trace_pipe line", function()
    local p, _, err = start([==[
local BPF = require("denet.bpf")
local b = BPF.new{ text = "BPF_HASH(h);" }
io.stderr:write("ready\n")
b:trace_fields()
]==])
    wait_for(err, "ready", p)
    local code, took = stop(p, denet.SIGINT)
    assert.equals(130, code)
    assert.is_true(took < 1, "took " .. took .. " s")
  end)

  it("ends a script that caught it at the second signal, with no BPF program left loaded", function()
    local p, out, err = start([==[
local ffi = require("ffi")
local denet = require("denet")
local BPF = require("denet.bpf")
pcall(ffi.cdef, "unsigned int sleep(unsigned int);")
local b = BPF.new{ text = "int dnleakchk(void *ctx) { return 0; }" }
b:attach_uprobe{ name = "c", sym = "getpid", fn_name = "dnleakchk" }
io.stderr:write("ready\n")
local ok, e = pcall(denet.sleep, 60)
print("caught", tostring(e))
io.stdout:flush()
io.stderr:write("caught\n")
-- cleanup that never ends, in C where no Lua hook runs
ffi.C.sleep(60)
]==])
    wait_for(err, "ready", p)
    wait_blocked(p)
    assert.is_true(loaded("dnleakchk"))
    p:kill(denet.SIGINT)
    wait_for(err, "caught", p)
    local code, took = stop(p, denet.SIGINT)
    assert.equals(130, code)
    assert.is_true(took < 1, "took " .. took .. " s")
    assert.equals("caught\tinterrupted\n", H.slurp(out))
    assert.is_false(loaded("dnleakchk"))
  end)

  it("still runs a plugin's on_end when the run is interrupted", function()
    local mark = H.tmpfile(".mark")
    local p, _, err = start(string.format([==[
return {
  on_start = function() io.stderr:write("ready\n") end,
  on_end = function(s)
    local f = assert(io.open(%q, "w"))
    f:write("on_end ", tostring(s.exit_code), "\n")
    f:close()
  end,
}
]==], mark), { "--", H.fixture("sleeper"), "60" })
    wait_for(err, "ready", p)
    local code, took = stop(p, denet.SIGINT)
    -- the command got the SIGINT (passed on) and ended by it
    assert.equals(130, code)
    assert.is_true(took < 2, "took " .. took .. " s")
    assert.equals("on_end 130\n", H.slurp(mark))
  end)
end)
