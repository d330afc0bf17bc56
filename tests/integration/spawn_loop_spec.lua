-- Held spawn, wait with rusage, exit codes, and the event loop's timers.
local denet = require("denet")

describe("denet.spawn", function()
  it("holds the command before exec until resume", function()
    local p = denet.spawn({ H.fixture("exit_with"), "0" }, { stdout = "null" })
    -- still our own image, not the command: exec has not happened
    local exe = io.popen("readlink /proc/" .. p.pid .. "/exe"):read("*l")
    assert.equals(H.bin:match("[^/]+$"), exe:match("[^/]+$"))
    assert.is_true(p:held())
    p:resume()
    assert.is_false(p:held())
    assert.equals(0, p:wait())
  end)

  it("returns the exit code, and 128+signal for a killed command", function()
    local p = denet.spawn({ H.fixture("exit_with"), "7" }, { stdout = "null" }):resume()
    assert.equals(7, p:wait())
    p = denet.spawn({ H.fixture("exit_with"), "kill" }, { stdout = "null" }):resume()
    local code, _, sig = p:wait()
    assert.equals(128 + 9, code)
    assert.equals(9, sig)
  end)

  it("redirects stdout to a file", function()
    local out = H.tmpfile(".txt")
    denet.spawn({ H.fixture("exit_with"), "0", "to a file" }, { stdout = out }):resume():wait()
    assert.equals("to a file\n", H.slurp(out))
  end)

  it("reports the rusage of the command and its reaped descendants", function()
    -- 4 children x 100 ms of CPU, forked and reaped by the command
    local p = denet.spawn({ H.fixture("fork_burn"), "4", "100" }):resume()
    local code, ru = p:wait()
    assert.equals(0, code)
    local cpu = ru.utime + ru.stime
    assert.is_true(cpu >= 0.39 and cpu < 0.6, "cpu " .. cpu)
  end)

  it("names a command that does not exist, before anything runs", function()
    local ok, err = pcall(denet.spawn, { "no-such-command-xyz" })
    assert.is_false(ok)
    assert.matches("cannot execute 'no%-such%-command%-xyz': command not found", tostring(err))
  end)

  it("names a file that is not executable", function()
    local f = H.write(H.tmpfile(".txt"), "data")
    local ok, err = pcall(denet.spawn, { f })
    assert.is_false(ok)
    assert.matches("cannot execute '.*': Permission denied", tostring(err))
  end)

  it("reports an exec failure at resume (bad interpreter), not exit 127", function()
    local f = H.write(H.tmpfile(".sh"), "#!/no/such/interpreter\n")
    os.execute("chmod +x " .. f)
    local p = denet.spawn({ f })
    local ok, err = pcall(p.resume, p)
    assert.is_false(ok)
    assert.matches("cannot start '.*': No such file or directory", tostring(err))
  end)

  it("kills and waits", function()
    local p = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
    local t0 = denet.clock()
    assert.is_true(p:kill(denet.SIGTERM))
    assert.equals(128 + 15, p:wait())
    assert.is_true(denet.clock() - t0 < 1)
  end)

  it("wait_for terminates a command that outlives its time, SIGKILL if it ignores SIGTERM", function()
    local t0 = denet.clock()
    local p = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
    assert.equals(128 + 15, p:wait_for(0.2))
    assert.is_true(denet.clock() - t0 < 1)
    p = denet.spawn({ "sh", "-c", "trap '' TERM; exec " .. H.fixture("sleeper") .. " 30" }):resume()
    t0 = denet.clock()
    assert.equals(128 + 9, p:wait_for(0.2, 0.3))
    assert.is_true(denet.clock() - t0 < 1.5)
    p = denet.spawn({ H.fixture("exit_with"), "4" }, { stdout = "null" }):resume()
    assert.equals(4, p:wait_for(5))
  end)

  it("open_output names a path that cannot be written", function()
    local ok, err = pcall(denet.open_output, "/nonexistent/dir/x")
    assert.is_false(ok)
    assert.equals("cannot write /nonexistent/dir/x: No such file or directory", tostring(err))
  end)

  it("wait with a timeout returns nil while the command runs", function()
    local p = denet.spawn({ H.fixture("sleeper"), "30" }):resume()
    assert.is_nil(p:wait{ timeout = 0.1 })
    p:kill(denet.SIGKILL)
    assert.equals(137, p:wait())
  end)
end)

describe("the event loop", function()
  it("fires a periodic timer on absolute deadlines (no drift)", function()
    local ticks = {}
    local t0 = denet.clock()
    local timer = denet.every(0.05, function()
      ticks[#ticks + 1] = denet.clock() - t0
      -- slow callbacks must not push later ticks back
      local spin = denet.clock() + 0.02
      while denet.clock() < spin do
      end
    end)
    denet.sleep(0.52)
    timer:close()
    assert.equals(10, #ticks)
    -- the 10th tick is at 0.50 s, not 10 x (0.05 + 0.02)
    assert.is_true(math.abs(ticks[10] - 0.50) < 0.02, "10th tick at " .. ticks[10])
  end)

  it("runs a one-shot timer once and stops run() from a callback", function()
    local n = 0
    denet.after(0.05, function()
      n = n + 1
      denet.stop()
    end)
    local why = denet.run{ duration = 2 }
    assert.equals("stopped", why)
    assert.equals(1, n)
    assert.equals("timeout", denet.run{ duration = 0.05 })
    assert.equals(1, n)
  end)

  it("keeps timers running while waiting for a child", function()
    local n = 0
    local t = denet.every(0.02, function()
      n = n + 1
    end)
    denet.spawn({ H.fixture("sleeper"), "0.3" }):resume():wait()
    t:close()
    assert.is_true(n >= 12 and n <= 16, "ticks " .. n)
  end)

  it("raises a callback's error out of poll with its traceback", function()
    local t = denet.after(0, function()
      error("tick failed")
    end)
    local ok, err = pcall(denet.poll, 1)
    assert.is_false(ok)
    assert.matches("spawn_loop_spec.lua:%d+: tick failed", err)
    assert.matches("stack traceback", err)
    t:close()
  end)
end)
