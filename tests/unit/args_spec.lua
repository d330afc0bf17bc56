-- Declared arguments (denet.args), the plugin host's isolation
-- (denet.plugins), and the REPL's printing and completion (denet.repl).
local args = require("denet.args")
local plugins = require("denet.plugins")
local repl = require("denet.repl")
local errors = require("denet.errors")

local SPEC = {
  description = "test",
  args = {
    { name = "limit", type = "number", default = 5, help = "a limit" },
    { name = "top", flag = "-T", type = "positive", metavar = "N" },
    { name = "verbose", flag = "-v", type = "bool" },
    { name = "func", required = true },
    { name = "names", type = "list" },
    { name = "plugin", repeatable = true },
  },
}

local function fails(argv, msg)
  local ok, e = pcall(args.parse, "prog", SPEC, argv)
  assert.is_false(ok)
  assert.is_true(errors.is_user(e))
  assert.equals(msg .. " (see prog --help)", tostring(e))
end

describe("denet.args", function()
  it("parses flags, values, defaults, lists, repeats and the command", function()
    local o = args.parse("prog", SPEC, { "--func", "f", "-T", "3", "-v", "--names=a,b", "--plugin", "x",
      "--plugin", "y", "--", "cmd", "-v" })
    assert.equals("f", o.func)
    assert.equals(3, o.top)
    assert.is_true(o.verbose)
    assert.equals(5, o.limit)
    assert.same({ "a", "b" }, o.names)
    assert.same({ "x", "y" }, o.plugin)
    assert.same({ "cmd", "-v" }, o.cmd)
  end)

  it("refuses bad input with one line", function()
    fails({ "--frob" }, "unknown argument '--frob'")
    fails({ "--func" }, "option --func needs a value")
    fails({ "--func", "f", "-T", "0" }, "-T needs a positive number, got '0'")
    fails({ "--func", "f", "--limit", "x" }, "--limit needs a non-negative number, got 'x'")
    fails({}, "missing --func")
    fails({ "--func", "f", "--verbose=1" }, "option --verbose takes no value")
  end)

  it("generates the usage text from the declarations", function()
    local u = args.usage("prog", SPEC)
    assert.matches("^usage: prog %[options%] %[%-%- CMD ARGS%.%.%.%]\n", u)
    assert.matches("\n  %-%-limit LIMIT +a limit %(default 5%)\n", u)
    assert.matches("\n  %-T, %-%-top N", u)
    assert.matches("\n  %-%-func FUNC +%(required%)\n", u)
    assert.matches("\n  %-h, %-%-help +this text\n", u)
  end)

  it("turns key=value pairs into options", function()
    assert.same({ "--limit-mib-s", "50", "--window", "2" }, args.from_pairs("limit_mib_s=50,window=2"))
  end)
end)

describe("denet.plugins host", function()
  it("reports a failing hook, disables the plugin after 3 errors, keeps the others", function()
    local lines = {}
    local out = { write = function(_, s) lines[#lines + 1] = s end }
    local bad = plugins.from_table({ on_sample = function() error("boom") end }, "/x/bad.lua")
    local n = 0
    local good = plugins.from_table({ on_sample = function() n = n + 1; return { n = n } end }, "/x/good.lua")
    local h = plugins.host({ bad, good }, out)
    local res
    for _ = 1, 5 do
      res = h:call("on_sample", {})
    end
    assert.equals(5, n)
    assert.same({ n = 5 }, res.good)
    assert.is_nil(res.bad)
    assert.is_true(bad.disabled)
    assert.equals(4, #lines)
    assert.matches("^plugin bad: .*boom\n$", lines[1])
    assert.equals("plugin bad: disabled after 3 errors; the run goes on without it\n", lines[4])
  end)

  it("trusts a file only its owner can write, in a folder nobody else can", function()
    local p = H.script("return {}")
    assert.is_true(plugins.trusted(p))
    os.execute("chmod 664 " .. p)
    local ok, why = plugins.trusted(p)
    assert.is_false(ok)
    assert.matches("refusing to load .*: it is writable by its group %(fix: chmod g%-w .*; "
      .. "%-%-allow%-untrusted overrides%)", why)
    os.execute("chmod 644 " .. p)
  end)

  it("reads what a script declares without running it", function()
    -- side effects of the top level do not happen
    local marker = H.tmpfile(".marker")
    local p = H.script(string.format([[
local f = io.open(%q, "w")
f:write("ran")
os.exit(3)
]], marker))
    assert.equals("script", plugins.describe(p).kind)
    assert.is_nil(io.open(marker, "r"))
    -- a top level that never ends is cut off
    local loop = H.script("while true do end")
    assert.equals("script", plugins.describe(loop).kind)
    local q = H.script([[return { description = "d", category = "c", args = { { name = "a" } },
      on_end = function() end }]])
    local d = plugins.describe(q)
    assert.equals("plugin", d.kind)
    assert.equals("c", d.category)
    assert.equals("a", d.args[1].name)
  end)
end)

describe("denet.repl", function()
  it("prints tables, strings and 64-bit numbers readably", function()
    assert.equals('{ 1, 2, a = "x" }', repl.pretty({ 1, 2, a = "x" }))
    assert.equals("12345678901", repl.pretty(12345678901ULL))
    local t = {}
    t.self = t
    assert.equals("{ self = <cycle> }", repl.pretty(t))
  end)

  it("completes globals and fields", function()
    local env = repl.env(nil, nil)
    assert.same({ "denet.spawn" }, repl.complete(env, "denet.spaw", "denet.spaw", 0))
    local c = repl.complete(env, "pai", "pai", 0)
    assert.same({ "pairs" }, c)
    assert.same({ "live.offcpu" }, repl.complete(env, "live.off", "x = live.off", 4))
  end)
end)
