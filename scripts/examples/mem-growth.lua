-- mem-growth: warn when the target tree's resident memory grows faster
-- than a limit, measured over a sliding window of the monitor's samples.
-- A plugin on on_sample only: no BPF of its own.
--
--   denet script mem-growth --limit-mib-s 50 -- CMD
--   denet run --plugin mem-growth:limit_mib_s=50 -o out.jsonl -- CMD
local P = {
  description = "Warns when the tree's RSS grows faster than N MiB/s",
  category = "memory",
  example = "denet script mem-growth --limit-mib-s 50 --window 1 -- ./leaky",
  args = {
    { name = "limit_mib_s", type = "number", default = 100, metavar = "MIB_S", help = "warn above this growth" },
    { name = "window", type = "positive", default = 1, metavar = "SECONDS", help = "growth measured over this" },
  },
}

local opts
local hist = {} -- { t (s), rss (KiB) } of recent samples
local warnings, peak_rate = 0, 0
local out = io.stderr

function P.on_init(args)
  opts = args
end

function P.on_sample(s)
  local agg = s.aggregated
  if not agg or not agg.mem_rss_kb then
    return nil
  end
  local t, rss = s.ts_ms / 1000, agg.mem_rss_kb
  hist[#hist + 1] = { t, rss }
  -- the oldest sample still inside the window
  while #hist > 2 and t - hist[2][1] >= opts.window do
    table.remove(hist, 1)
  end
  local t0, rss0 = hist[1][1], hist[1][2]
  local rate = 0
  if t - t0 >= opts.window * 0.5 then
    rate = (rss - rss0) / 1024 / (t - t0)
  end
  peak_rate = math.max(peak_rate, rate)
  if rate > opts.limit_mib_s then
    warnings = warnings + 1
    out:write(string.format("mem-growth: RSS grew %.1f MiB/s over %.1f s (now %.1f MiB, limit %g MiB/s)\n", rate,
      t - t0, rss / 1024, opts.limit_mib_s))
  end
  return { rss_mib = math.floor(rss / 1024 * 10 + 0.5) / 10, growth_mib_s = math.floor(rate * 10 + 0.5) / 10 }
end

function P.on_end()
  out:write(string.format("mem-growth: %d warnings; fastest growth %.1f MiB/s\n", warnings, peak_rate))
  return { warnings = warnings, peak_growth_mib_s = math.floor(peak_rate * 10 + 0.5) / 10 }
end

return P
