-- denet.export.pprof: an off-CPU report as a pprof profile (gzipped
-- protobuf, proto/profile.proto), for `go tool pprof`, speedscope,
-- Pyroscope and Grafana.
--
--   require("denet.export.pprof").write("offcpu.pb.gz", report)
--
-- Two sample types: off-CPU time in nanoseconds (the default) and the
-- number of blocks. Each stack is a sample, leaf first: kernel frames
-- (file "[kernel.kallsyms]") under user frames (file and line: their
-- source's, where DWARF has it; a Python frame's function, file and line).
-- Labels: thread ("comm:tid"), pid and tid (numbers), category, syscall.
local core = require("denet.core")
local errors = require("denet.errors")

local M = {}

--- The profile table core.pprof_write takes, from an off-CPU report.
function M.profile(report)
  local samples = {}
  for _, s in ipairs(report.stacks or {}) do
    local lines = s.user_lines or {}
    local stack = {}
    -- frames run from the root: user frames, "-", kernel frames; a user
    -- frame's file is its source file where DWARF has its line
    local kernel = false
    local at = {}
    for i, f in ipairs(s.frames) do
      if f == "-" then
        kernel = true
      else
        local l = lines[i] or ""
        local file, line = l:match("^(.*):(%d+)$")
        -- a Python frame's label ("napper (script.py:12)"): its function
        if l ~= "" and f:sub(-#l - 3) == " (" .. l .. ")" then
          f = f:sub(1, -#l - 4)
        end
        at[#at + 1] = { f, kernel and "[kernel.kallsyms]" or file or "", tonumber(line) }
      end
    end
    for i = #at, 1, -1 do
      stack[#stack + 1] = at[i]
    end
    local labels = {
      { "thread", string.format("%s:%d", s.comm or "?", s.tid or 0) },
      { "pid", s.pid or 0, "" },
      { "tid", s.tid or 0, "" },
      { "category", s.category or "other" },
    }
    if s.syscall and s.syscall ~= "" then
      labels[#labels + 1] = { "syscall", s.syscall }
    end
    samples[#samples + 1] = { stack = stack, values = { math.floor(s.us * 1000 + 0.5), s.count }, labels = labels }
  end
  local duration_ns = (report.duration_us or 0) * 1000
  return {
    sample_types = { { "offcpu", "nanoseconds" }, { "blocks", "count" } },
    default_sample_type = "offcpu",
    period_type = { "offcpu", "nanoseconds" },
    period = 1,
    time_nanos = math.floor((core.realtime() * 1e9) - duration_ns),
    duration_nanos = duration_ns,
    comments = { "denet offcpu: time threads spent blocked, by stack" },
    samples = samples,
  }
end

--- Write report to path as a gzipped pprof profile.
function M.write(path, report)
  local ok, msg = core.pprof_write(path, M.profile(report))
  if not ok then
    errors.raise(msg)
  end
end

return M
