-- denet.export.snakemake: a run's summary as the benchmark file of
-- Snakemake's `benchmark:` directive (snakemake/benchmark.py, Snakemake
-- 7): a header and one tab-separated row, the same columns, units and
-- number formats, so that workflows that read those files read denet's.
--
--   s         running time, seconds (4 decimals)
--   h:m:s     the same, H:MM:SS ("N days, " before it past a day)
--   max_rss   MiB (as psutil's bytes / 1024 / 1024), max_vms, max_uss,
--   max_pss   the peaks of the whole tree's sums
--   io_in     MiB read from storage, io_out MiB written
--   mean_load CPU seconds per second of running time, in percent
--   cpu_time  CPU seconds, user and system
-- Snakemake measures by polling (every 0.5 s, then every 30 s) and counts
-- what the processes alive at its last poll used; denet's figures are
-- those of its summary: processes that exited, however short, included.
local M = {}

M.HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"

local function hms(secs)
  local whole = math.floor(secs)
  local days = math.floor(whole / 86400)
  local rest = whole % 86400
  local s = string.format("%d:%02d:%02d", math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60)
  if days > 0 then
    s = string.format("%d day%s, ", days, days == 1 and "" or "s") .. s
  end
  return s
end

local function mib(bytes)
  return string.format("%.2f", (tonumber(bytes) or 0) / 1048576)
end

--- The row of summary record s (denet.monitor.summary's result).
function M.row(s)
  local t = tonumber(s.total_time_secs) or 0
  local cpu = tonumber(s.cpu_time_secs) or 0
  return table.concat({
    string.format("%.4f", t), hms(t),
    mib((s.peak_mem_rss_kb or 0) * 1024), mib((s.peak_mem_vms_kb or 0) * 1024),
    mib((s.peak_mem_uss_kb or 0) * 1024), mib((s.peak_mem_pss_kb or 0) * 1024),
    mib(s.total_disk_read_bytes), mib(s.total_disk_write_bytes),
    string.format("%.2f", t > 0 and 100 * cpu / t or 0), string.format("%.2f", cpu),
  }, "\t")
end

--- The file's text: the header and the row of summary record s.
function M.tsv(s)
  return M.HEADER .. "\n" .. M.row(s) .. "\n"
end

return M
