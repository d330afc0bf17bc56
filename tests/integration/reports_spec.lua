-- Reports a person opens: the off-CPU HTML report and the run's HTML
-- charts, driven in Debian's chromium (headless, puppeteer-core), and the
-- pprof profile, decoded with protoc against proto/profile.proto. Their
-- figures must be the JSON report's and the JSONL's.
local cjson = require("cjson")

local function offcpu_run(extra)
  local json = H.tmpfile(".json")
  local args = { "script", "offcpu", "--json" }
  for _, a in ipairs(extra) do
    args[#args + 1] = a
  end
  args[#args + 1] = "--"
  args[#args + 1] = H.fixture("lock_wait")
  local code, out, err = H.denet(args)
  assert.equals(0, code, err)
  H.write(json, out)
  return cjson.decode(out)
end

describe("denet script offcpu --pprof", function()
  it("writes a gzipped pprof profile whose totals are the report's", function()
    local pb = H.tmpfile(".pb.gz")
    local report = offcpu_run({ "--pprof", pb })
    local code, text, err = H.sh("zcat " .. H.quote(pb) .. " | protoc --decode perftools.profiles.Profile -I "
      .. H.quote(H.source .. "/proto") .. " " .. H.quote(H.source .. "/proto/profile.proto"))
    assert.equals(0, code, err)
    -- the report's totals
    local want_ns, want_n = 0, 0
    for _, s in ipairs(report.stacks) do
      want_ns = want_ns + math.floor(s.us * 1000 + 0.5)
      want_n = want_n + s.count
    end
    assert.is_true(want_ns > 0)
    -- the profile's: each sample holds two values (ns, blocks)
    local ns, n, samples = 0, 0, 0
    for body in text:gmatch("\nsample {(.-)\n}") do
      samples = samples + 1
      local vals = {}
      for v in body:gmatch("\n  value: (%d+)") do
        vals[#vals + 1] = tonumber(v)
      end
      assert.equals(2, #vals)
      ns, n = ns + vals[1], n + vals[2]
    end
    assert.equals(#report.stacks, samples)
    assert.equals(want_ns, ns)
    assert.equals(want_n, n)
    -- strings: sample types, labels, frames of both worlds
    local strings = {}
    for s in text:gmatch('\nstring_table: "([^"]*)"') do
      strings[#strings + 1] = s
    end
    local have = {}
    for _, s in ipairs(strings) do
      have[s] = true
    end
    for _, s in ipairs({ "offcpu", "nanoseconds", "blocks", "count", "thread", "category", "syscall", "pid", "tid",
      "[kernel.kallsyms]", "lock", "futex" }) do
      assert.is_true(have[s] == true, "string table lacks " .. s)
    end
    -- every frame of the report's stacks, the fixture's function among them
    local fixture_fn = false
    for _, st in ipairs(report.stacks) do
      for _, f in ipairs(st.frames) do
        if f ~= "-" then
          assert.is_true(have[f] == true, "string table lacks " .. f)
          fixture_fn = fixture_fn or f == "wait_for_lock" or f == "take_lock"
        end
      end
    end
    assert.is_true(fixture_fn, "the fixture's functions in the report")
    local dst = tonumber(text:match("\ndefault_sample_type: (%d+)"))
    assert.equals("offcpu", strings[dst + 1])
  end)
end)

describe("HTML reports in a browser", function()
  it("zoom on click, highlight on search, and plot every sample", function()
    local html = H.tmpfile(".html")
    local report = offcpu_run({ "--html", html })
    local page = H.slurp(html)
    -- one file: nothing fetched from elsewhere
    assert.is_nil(page:find('src="http', 1, true))
    assert.is_nil(page:find('href="http', 1, true))
    -- a run with its JSONL, charted by denet stats
    local jsonl, chart = H.tmpfile(".jsonl"), H.tmpfile(".html")
    local code, _, err = H.denet({ "run", "-q", "-o", jsonl, "--", H.fixture("spin_children"), "2", "0.6" })
    assert.equals(0, code, err)
    code, _, err = H.denet({ "stats", jsonl, "--html", chart })
    assert.equals(0, code, err)
    local records = 0
    for line in io.lines(jsonl) do
      if line:find('"kind":"tree"', 1, true) then
        records = records + 1
      end
    end
    assert.is_true(records >= 3)
    local out
    code, out, err = H.sh("node " .. H.quote(H.source .. "/tests/browser/reports.js") .. " " .. H.quote(html)
      .. " wait_for_lock futex " .. H.quote(chart) .. (os.getenv("DENET_SCREENSHOTS") and
      (" " .. H.quote(os.getenv("DENET_SCREENSHOTS"))) or ""))
    assert.equals(0, code, err)
    local r = cjson.decode(out)
    assert.same({}, r.errors)
    assert.same({}, r.requests)
    -- flame graph: the frame is narrower than the graph; clicked, it fills
    -- it; reset, it is back
    local o = r.offcpu
    assert.is_true(o.frames > 5)
    assert.is_true(o.before.width < o.full - 1, cjson.encode(o))
    assert.is_true(math.abs(o.after.width - o.full) < 0.5, cjson.encode(o))
    assert.is_true(o.reset_enabled)
    assert.is_true(math.abs(o.after_reset.width - o.before.width) < 0.01)
    -- search: the futex frames light up, nothing else
    assert.is_true(#o.highlighted > 0)
    for _, name in ipairs(o.highlighted) do
      assert.matches("futex", name)
    end
    assert.matches("^Matched: %d+%.%d%% of all$", o.matched)
    -- the tables are the report's
    assert.equals(report.verdict, o.verdict)
    assert.equals(#report.threads, o.thread_rows)
    assert.equals(math.min(#report.sites, 30), o.site_rows)
    -- charts: one point per record in every series
    local ids = {}
    for _, c in ipairs(r.stats.charts) do
      ids[#ids + 1] = c.id
      for _, s in ipairs(c.series) do
        assert.equals(records, s.points, c.id .. "/" .. s.name)
      end
    end
    assert.same({ "cpu", "memory", "io", "threads", "processes" }, ids)
    assert.is_true(r.stats.summary_rows > 5)
  end)
end)
