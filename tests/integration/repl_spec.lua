-- The REPL, driven through a pseudo-terminal (tests/tools/pty_drive.py):
-- completion, multi-line input, Ctrl-C of a line and of a running loop,
-- pretty printing, history, and the live helpers on a target. Expectations
-- are Python regular expressions. A Ctrl-D is sent only once the prompt is
-- back: between lines the terminal is in cooked mode, where the tty itself
-- would take the ^D.
local cjson = require("cjson")

local function drive(steps, args, env)
  local argv = { "/usr/bin/python3", H.source .. "/tests/tools/pty_drive.py", cjson.encode(steps), "--", H.bin, "repl" }
  for _, a in ipairs(args or {}) do
    argv[#argv + 1] = a
  end
  local q = {}
  for i, a in ipairs(argv) do
    q[i] = H.quote(a)
  end
  return H.sh((env or "") .. table.concat(q, " "))
end

describe("denet repl", function()
  local home = H.tmpfile("-home")
  os.execute("mkdir -p " .. H.quote(home))
  local env = "HOME=" .. H.quote(home) .. " "

  it("completes globals, fields and tracepoint names", function()
    local code, out, err = drive({
      { expect = "denet> " },
      { send = "denet.sp\t", expect = [[denet\.spawn]] },
      { send = "\003", expect = "denet> " },
      { send = "ev = \"sched:sched_swi\t", expect = "sched:sched_switch" },
      -- readline closes the quote itself
      { send = "\r", expect = "denet> " },
      { send = "ev\r", expect = [["sched:sched_switch"[\s\S]*denet> ]] },
      { send = "\004" },
    }, {}, env)
    assert.equals(0, code, err .. out)
  end)

  it("takes a multi-line function, prints tables, drops a line on Ctrl-C, keeps history", function()
    local code, out, err = drive({
      { expect = "denet> " },
      { send = "function twice(x)\r", expect = ">> " },
      { send = "  return x * 2\r", expect = ">> " },
      { send = "end\r", expect = "denet> " },
      { send = "twice(21)\r", expect = "42" },
      { send = "{ a = 1, b = { 2, 3 }, [\"x y\"] = true }\r",
        expect = [[\{ a = 1, b = \{ 2, 3 \}, \["x y"\] = true \}]] },
      { send = "1 +", sleep = 0.3 },
      { send = "\003", expect = "denet> " },
      { send = "2 + 2\r", expect = [[4[\s\S]*denet> ]] },
      { send = "\004" },
    }, {}, env)
    assert.equals(0, code, err .. out)
    assert.is_nil(out:find("attempt to", 1, true), out)
    local hist = H.slurp(home .. "/.denet_history")
    assert.matches("twice%(21%)", hist)
  end)

  it("Ctrl-C stops a running loop without leaving", function()
    local code, out, err = drive({
      { expect = "denet> " },
      { send = "n = 0 while true do n = n + 1 end\r", sleep = 0.5 },
      { send = "\003", expect = "interrupted" },
      { send = "n > 0\r", expect = "true" },
      { send = "denet.sleep(30)\r", sleep = 0.3 },
      { send = "\003", expect = "interrupted" },
      { send = "\"still here\"\r", expect = [[still here[\s\S]*denet> ]] },
      { send = "\004" },
    }, {}, env)
    assert.equals(0, code, err .. out)
  end)

  it("starts, inspects and stops off-CPU tracing of the target live", function()
    local code, out, err = drive({
      { expect = [[held: go\(\) runs it]] },
      { send = "oc = live.offcpu()\r", expect = "denet> ", timeout = 20 },
      { send = "go()\r", expect = "true" },
      { send = "denet.sleep(0.6)\r", expect = "denet> " },
      { send = "oc:top(3)\r", expect = [[sleep +sleep_loop +[^\n]*nap]] },
      { send = "r = oc:stop()\r", expect = "denet> " },
      { send = "r.kind\r", expect = [["offcpu"[\s\S]*denet> ]] },
      { send = "\004" },
    }, { "--", H.fixture("sleep_loop"), "20", "50" }, env)
    assert.equals(0, code, err .. out)
  end)

  it("prints the structs of BPF tables field by field", function()
    local BPF = require("denet.bpf")
    local repl = require("denet.repl")
    local b = BPF.new{ text = [[
struct k { u32 pid; char comm[16]; };
struct v { u64 n; u32 x; };
BPF_HASH(h, struct k, struct v, 16);
]] }
    local t = b:get_table("h")
    t:set({ pid = 7, comm = "abc" }, { n = 5, x = 2 })
    for k, v in t:items() do
      assert.equals('{ pid = 7, comm = "abc" }', repl.pretty(k))
      assert.equals("{ n = 5, x = 2 }", repl.pretty(v))
    end
    b:close()
  end)
end)
