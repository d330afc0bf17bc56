-- The monitor's /proc readers: a watched process that exits reads as gone,
-- and so does its pid when a new process reuses it (the held fds stay
-- bound to the old process); odd comms parse.
local denet = require("denet")
local procfs = require("denet.procfs")
local ffi = require("ffi")

local function read(t, pid)
  local buf, n = t:sample(false, false)
  for i = 0, n - 1 do
    if buf[i].pid == pid then
      return buf[i]
    end
  end
end

describe("procfs table", function()
  it("reads a live process and flags it gone once it has exited", function()
    local p = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
    local t = procfs.new()
    assert.is_true((t:add(p.pid)))
    local s = read(t, p.pid)
    assert.equals(0, bit.band(s.flags, procfs.GONE))
    assert.equals("sleeper", ffi.string(s.comm))
    assert.equals(1, s.threads)
    assert.is_true(s.fd_count >= 3)
    p:kill(9)
    p:wait()
    s = read(t, p.pid)
    assert.equals(procfs.GONE, bit.band(s.flags, procfs.GONE))
  end)

  it("does not read a new process that reuses the pid", function()
    -- make the next fork get the pid of one that exited (root, initial pid
    -- namespace); another process on the machine may fork in between and
    -- take it, so try again then
    local pid, t, b
    for _ = 1, 20 do
      local a = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
      pid = a.pid
      t = procfs.new()
      t:add(pid)
      a:kill(9)
      a:wait()
      local f = assert(io.open("/proc/sys/kernel/ns_last_pid", "w"))
      f:write(tostring(pid - 1))
      f:close()
      b = denet.spawn({ H.fixture("odd_comm"), "0.5" }):resume()
      if b.pid == pid then
        break
      end
      b:kill(9)
      b:wait()
    end
    assert.equals(pid, b.pid)
    local s = read(t, pid)
    assert.equals(procfs.GONE, bit.band(s.flags, procfs.GONE))
    -- a fresh table sees the new process, comm with spaces and parentheses
    local t2 = procfs.new()
    t2:add(pid)
    denet.sleep(0.05)
    s = read(t2, pid)
    assert.equals(0, bit.band(s.flags, procfs.GONE))
    assert.equals("x) (y", ffi.string(s.comm))
    assert.is_true(s.ppid > 0)
    b:kill(9)
    b:wait()
  end)

  it("a process left unread (not run since its last read) is read after all once it has exited", function()
    -- the monitor skips processes that did not run; one that exits and is
    -- reaped between its skip being decided and its parent's read must
    -- read as gone, not as its last reading (its parent already counts it)
    local a = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
    local b = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
    local c = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
    local t = procfs.new()
    for _, p in ipairs({ a, b, c }) do
      assert.is_true((t:add(p.pid)))
    end
    local function flags(pid)
      local buf, n = t:sample(false, false, function()
        return true
      end)
      for i = 0, n - 1 do
        if buf[i].pid == pid then
          return buf[i].flags, string.char(buf[i].state)
        end
      end
    end
    for _, p in ipairs({ a, b, c }) do
      assert.equals(procfs.SKIPPED, (flags(p.pid)))
    end
    a:kill(9)
    a:wait() -- reaped: gone
    assert.equals(procfs.GONE, (flags(a.pid)))
    c:kill(9) -- exited, not reaped: its zombie is read
    H.sh("sh -c " .. H.quote(H.WAIT_SH .. "state " .. c.pid .. " Z"))
    local f, state = flags(c.pid)
    assert.equals(0, bit.band(f, procfs.SKIPPED + procfs.GONE))
    assert.equals("Z", state)
    assert.equals(procfs.SKIPPED, (flags(b.pid)))
    c:wait()
    b:kill(9)
    b:wait()
  end)
end)
