-- denet.export.openmetrics: a recorded run (the monitor's JSONL) as
-- OpenMetrics with the records' own timestamps, for Prometheus's backfill:
--
--   denet export run.jsonl --openmetrics > run.om
--   promtool tsdb create-blocks-from openmetrics run.om data/
--
-- Every `tree`/`sample` record becomes one point of each metric
-- (denet.metrics), labelled with the run's target and pid from its
-- `metadata` record.
local errors = require("denet.errors")
local metrics = require("denet.metrics")
local summary = require("denet.monitor.summary")

local M = {}

local USAGE = [[usage: denet export FILE.jsonl --openmetrics [-o OUT]

Turn a run recorded with `denet run -o FILE.jsonl` into OpenMetrics text
with the records' timestamps (stdout, or OUT), for
`promtool tsdb create-blocks-from openmetrics OUT DIR`.
]]

--- The OpenMetrics text of the records in text (JSONL, or the original's
--- JSON list), and how many points it holds.
function M.convert(text)
  local records = summary.records(text)
  local ident = { target = "", pid = "" }
  local series = metrics.series()
  local n = 0
  for _, rec in ipairs(records) do
    local kind = summary.kind_of(rec)
    if kind == "metadata" then
      local cmd = type(rec.cmd) == "table" and rec.cmd or nil
      ident = { target = require("denet.export.prometheus").target_name(cmd, nil), pid = tonumber(rec.pid) or "" }
      if (not cmd or not cmd[1]) and type(rec.executable) == "string" then
        ident.target = require("denet.util").basename(rec.executable)
      end
    elseif kind == "tree" or kind == "sample" then
      local _, ts = summary.figures(rec, kind)
      if ts then
        series:add(ts / 1000, metrics.from_record(rec, ident))
        n = n + 1
      end
    end
  end
  return metrics.openmetrics_series(series), n
end

function M.main(args)
  local path, out, om
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--openmetrics" then
      om = true
    elseif a == "-o" or a == "--output" then
      i = i + 1
      out = args[i]
    elseif a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      return 0
    elseif a:sub(1, 1) == "-" then
      errors.raise(string.format("export: unknown argument '%s' (see denet export --help)", a))
    elseif not path then
      path = a
    else
      errors.raise("export: one file at a time (see denet export --help)")
    end
    i = i + 1
  end
  if not path then
    errors.raise("export: missing the JSONL file (usage: denet export FILE.jsonl --openmetrics)")
  end
  if not om then
    errors.raise("export: say the format: --openmetrics (the only one so far)")
  end
  local body, n = M.convert(summary.read(path))
  if n == 0 then
    errors.raise(string.format("export: %s holds no tree or sample records", path))
  end
  local w = out and require("denet").open_output(out) or io.stdout
  w:write(body)
  if out then
    w:close()
  end
  return 0
end

return M
