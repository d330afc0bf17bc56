-- The Lua fuzz targets (tests/fuzz/fuzz_lua.c): each takes the fuzzer's
-- bytes as a string. Raising denet's user error is a fine answer to bad
-- input; any other error, or a check below that fails, is a crash.
local json = require("denet.json")

local T = {}

local function check(ok, what)
  if not ok then
    error("invariant broken: " .. what, 0)
  end
end

--- `denet stats` and `denet export` of a JSONL file.
function T.stats_jsonl(data)
  local summary = require("denet.monitor.summary")
  local s, n = summary.from_text(data)
  if n > 0 then
    local r = s:result()
    check(type(json.encode(r)) == "string", "the summary encodes")
    check(r.sample_count == n, "sample_count is the records read")
  end
  local om, points = require("denet.export.openmetrics").convert(data)
  check(om:sub(-6) == "# EOF\n", "OpenMetrics ends in # EOF")
  check(points == n or n == 0 or points <= n, "one point per record at most")
end

-- a plugin declaring one argument of every kind
local SPEC = {
  no_cmd = true,
  args = {
    { name = "limit", type = "int" }, { name = "rate", type = "number" }, { name = "size", type = "positive" },
    { name = "verbose", type = "bool" }, { name = "pids", type = "pids" }, { name = "name" },
    { name = "tag", repeatable = true },
  },
}

--- A plugin's argument string (NAME:key=value,...).
function T.plugin_args(data)
  local args = require("denet.args")
  local argv = args.from_pairs(data)
  check(type(argv) == "table", "from_pairs gives a list")
  local o = args.parse("plugin fuzz", SPEC, argv)
  check(o.limit == nil or (type(o.limit) == "number" and o.limit == math.floor(o.limit)), "an int is an integer")
  check(o.size == nil or o.size > 0, "positive is positive")
  if o.pids then
    for _, p in ipairs(o.pids) do
      check(type(p) == "number" and p > 0, "pids are positive numbers")
    end
  end
end

--- Symbol names through the off-CPU writers: folded stacks, the SVG, the
--- HTML report and the pprof table.
function T.folded(data)
  local offcpu = require("denet.offcpu")
  local frames = {}
  for name in (data .. "\n"):gmatch("([^\n]*)\n") do
    if #frames < 64 then
      frames[#frames + 1] = name
    end
  end
  local report = {
    stacks = { { comm = frames[1] or "x", tid = 1, pid = 1, category = "sleep", syscall = "", us = 1.5, count = 1,
      frames = frames, user = frames, user_mods = {} } },
    threads = {}, sites = {}, syscalls = {}, verdict = data:sub(1, 64), duration_us = 1,
  }
  local folded = offcpu.folded(report)
  for line in folded:gmatch("[^\n]+") do
    local stack, v = line:match("^(.*) (%d+)$")
    check(stack ~= nil and tonumber(v) == 2, "a folded line ends in its value")
    local _, semis = stack:gsub(";", "")
    check(semis == #frames, "one ';' between frames (names keep none)")
  end
  local svg = offcpu.svg(report, data:sub(1, 32))
  check(not svg:find("<[^/?%a]"), "SVG: no stray '<'")
  local html = require("denet.export.html").offcpu(report, data:sub(1, 32))
  local script = html:match('<script type="application/json" id="data">(.-)</script>')
  check(script ~= nil, "the data script ends where it should")
  check(json.try_decode(script) ~= nil, "the data script is JSON")
  local p = require("denet.export.pprof").profile(report)
  local want = 0
  for _, f in ipairs(frames) do
    if f ~= "-" then
      want = want + 1
    end
  end
  check(#p.samples == 1 and #p.samples[1].stack == want, "pprof: one location per frame but the separator")
end

return T
