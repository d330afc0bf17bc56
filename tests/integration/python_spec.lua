-- Python frames (bpf-src/python.c, denet.stacks.python): Debian's own
-- python3 (3.11) blocking in five ways, against the program's own
-- sys._current_frames(); the line table against CPython's; programs that
-- export CPython's symbols and are not 3.11.
local cjson = require("cjson")
local core = require("denet.core")
local python = require("denet.stacks.python")

local PY = "/usr/bin/python3"
local FIXTURE = H.source .. "/tests/fixtures/python/blocking.py"

-- Wait for the fixture's file (its threads are all blocked then).
local function wait_file(path)
  for _ = 1, 6000 do
    local text = core.read_file(path)
    if text then
      return cjson.decode((text))
    end
    require("denet").sleep(0.01)
  end
  error("the fixture never wrote " .. path)
end

describe("python frames", function()
  it("each blocked thread shows the functions and lines sys._current_frames() gives", function()
    local out = H.tmpfile(".json")
    local r = H.offcpu({}, { PY, FIXTURE, out })
    local want = cjson.decode((assert(core.read_file(out))))
    local sites = {}
    for tid, stack in pairs(want) do
      -- the thread's longest block
      local best
      for _, s in ipairs(r.stacks) do
        if s.tid == tonumber(tid) and (not best or s.us > best.us) then
          best = s
        end
      end
      assert.is_not_nil(best, "no stack of tid " .. tid)
      assert.same(stack, H.py_frames(best.frames), table.concat(best.frames, ";"))
      sites[stack[1][1] == "Condition.wait" and stack[3][1] or stack[1][1]] = best
    end
    -- what each waits on, and where, as the call sites say it
    local line = {}
    for n, text in core.read_file(FIXTURE):gmatch("()([^\n]*)\n") do
      line[#line + 1] = text
      assert(n)
    end
    local function at(tag)
      for i, text in ipairs(line) do
        if text:match("# " .. tag .. "$") then
          return i
        end
      end
    end
    assert.equals("time.sleep() <- inner_sleep() (blocking.py:" .. at("SLEEP") .. ")", sites.inner_sleep.site)
    assert.equals("sleep", sites.inner_sleep.category)
    assert.equals("os.read() <- inner_read() (blocking.py:" .. at("READ") .. ")", sites.inner_read.site)
    assert.equals("lock.acquire() <- inner_lock() (blocking.py:" .. at("LOCK") .. ")", sites.inner_lock.site)
    assert.equals("lock", sites.inner_lock.category)
    assert.equals("jobs.get() <- inner_get() (blocking.py:" .. at("QUEUE") .. ")", sites.inner_get.site)
    assert.equals("select.select() <- inner_select() (blocking.py:" .. at("SELECT") .. ")", sites.inner_select.site)
    -- a C function called from Python keeps its frames below the Python
    -- one: libc's select, then the kernel's
    local f = sites.inner_select.frames
    local inner, dash, sel
    for i, name in ipairs(f) do
      inner = name:match("^inner_select ") and i or inner
      dash = dash or (name == "-" and i)
      sel = sel or ((name == "select" or name == "__select") and i)
    end
    assert.is_true(inner ~= nil and sel ~= nil and inner < sel and sel < dash, table.concat(f, ";"))
    -- every block of the program walked, none cut short
    assert.is_true(r.python_frames.walks >= 10, cjson.encode(r.python_frames))
    assert.equals(0, r.python_frames.truncated)
    assert.equals(0, r.python_frames.not_stored)
    -- pprof: a Python frame's function, file and line apart
    local prof = require("denet.export.pprof").profile(r)
    local found
    for _, smp in ipairs(prof.samples) do
      for _, loc in ipairs(smp.stack) do
        if loc[1] == "inner_read" then
          found = loc
        end
      end
    end
    assert.same({ "inner_read", "blocking.py", at("READ") }, found)
    -- no interpreter loop is left where Python frames stand
    for _, s in ipairs(r.stacks) do
      if want[tostring(s.tid)] then
        for _, name in ipairs(s.frames) do
          assert.is_not.equals("_PyEval_EvalFrameDefault", name)
        end
      end
    end
  end)

  it("--now on a blocked Python program: each thread's Python stack, what it waits on, and since when", function()
    local out = H.tmpfile(".json")
    local f = io.popen("echo $$; exec " .. PY .. " " .. H.quote(FIXTURE) .. " " .. H.quote(out)
      .. " hold >/dev/null 2>&1")
    local pid = tonumber(f:read("*l"))
    local want = wait_file(out)
    local code, text, err = H.denet({ "script", "offcpu", "--now", "--json", "-p", tostring(pid) })
    H.write(out .. ".go", "")
    f:close()
    assert.equals(0, code, err)
    local r = cjson.decode(text)
    local cats = { inner_sleep = "sleep", inner_read = "ipc", inner_lock = "lock", ["Condition.wait"] = "lock",
      inner_select = "poll" }
    local seen = 0
    for _, t in ipairs(r.threads) do
      local stack = want[tostring(t.tid)]
      if stack then
        seen = seen + 1
        assert.same(stack, H.py_frames(t.frames))
        assert.equals(cats[stack[1][1]], t.category)
        -- (the sleeper sleeps 50 ms at a time: the others since the fixture saw them blocked)
        assert.is_true(t.blocked_for_us >= (stack[1][1] == "inner_sleep" and 0 or 1), tostring(t.blocked_for_us))
        assert.matches("%(blocking%.py:%d+%)$", t.site)
      end
    end
    assert.equals(5, seen)
  end)

  it("turns instructions into lines and columns as CPython's co_positions() does", function()
    -- every instruction of a few functions of the standard library
    local prog = [==[
import json, threading, queue, json.decoder as d
out = []
import subprocess, email.message
def gen():
    try:
        yield from range(3)
    except ValueError as e:
        raise RuntimeError() from e
    finally:
        pass
for fn in (threading.Thread.run, threading.Condition.wait, queue.Queue.get, d.JSONDecoder.raw_decode, gen,
           subprocess.Popen.__init__, email.message.Message.get_payload):
    c = fn.__code__
    out.append({"first": c.co_firstlineno, "table": c.co_linetable.hex(),
                "pos": [[p[0] or 0, -1 if p[2] is None else p[2], -1 if p[3] is None else p[3]]
                        for p in c.co_positions()]})
print(json.dumps(out))
]==]
    local code, text, err = H.sh(PY .. " -c " .. H.quote(prog))
    assert.equals(0, code, err)
    local n = 0
    for _, c in ipairs(cjson.decode(text)) do
      local lt = c.table:gsub("%x%x", function(h)
        return string.char(tonumber(h, 16))
      end)
      for i, p in ipairs(c.pos) do
        local line, col, endcol = python.line_of(lt, c.first, i - 1)
        assert.same(p, { line or 0, col or -1, endcol or -1 })
        n = n + 1
      end
    end
    assert.is_true(n > 100)
  end)

  it("puts each run of Python frames in place of the interpreter loop that ran it", function()
    local E = python.EVAL
    local uf = { "_start", "main", E, "call", E, "PyObject_Vectorcall", "sleep" }
    local mods = { true, true, true, true, true, true, false }
    local lines = { "", "", "", "", "", "", "" }
    -- innermost first: a run of two (inner, outer; outer entered from
    -- C), then one of two
    local pyf = { { name = "leaf", file = "/a/x.py", line = 3 },
      { name = "mid", file = "/a/x.py", line = 7, entry = true },
      { name = "top", file = "/a/y.py", line = 1 }, { name = "<module>", file = "/a/y.py", line = 9, entry = true } }
    local out, omods, olines, at = python.merge(uf, mods, lines, pyf)
    assert.same({ "_start", "main", "<module> (y.py:9)", "top (y.py:1)", "call", "mid (x.py:7)", "leaf (x.py:3)",
      "PyObject_Vectorcall", "sleep" }, out)
    assert.same({ false, false, true, true, false, true, true, false, false }, omods)
    assert.equals("x.py:3", olines[7])
    assert.equals("leaf", at[7].name)
    -- the native walk stopped short: the outer run goes at the root
    out = python.merge({ "[truncated]", E, "sleep" }, { false, true, false }, { "", "", "" }, pyf, true)
    assert.same({ "[truncated]", "[truncated python]", "<module> (y.py:9)", "top (y.py:1)", "mid (x.py:7)",
      "leaf (x.py:3)", "sleep" }, out)
  end)

  it("an interpreter of another version, or whose layout fails the check, gets native frames and one line", function()
    for _, c in ipairs({ { "fake_py312", "it is Python 3%.12" },
      { "fake_py_layout", "does not point back at its interpreter" } }) do
      local code, out, err = H.denet({ "script", "offcpu", "--json", "--", H.fixture(c[1]), "0.5" })
      assert.equals(0, code, err)
      local _, said = err:gsub("Python frames of [^\n]*" .. c[1] .. " are not read", "")
      assert.equals(1, said, err .. out:sub(1, 3000))
      assert.matches(c[2], err)
      local r = cjson.decode(out)
      local sleeps = 0
      for _, s in ipairs(r.stacks) do
        local joined = table.concat(s.frames, ";")
        assert.is_nil(joined:match("%.py:%d+%)"))
        if s.category == "sleep" then
          assert.matches("main;fake_outer;fake_wait;", joined)
          sleeps = sleeps + s.count
        end
      end
      -- the parent and its child
      assert.equals(2, sleeps)
    end
  end)
end)
