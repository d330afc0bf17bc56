-- denet.offcpu.render: off-CPU reports for people and tools: the text
-- report (threads, call sites, syscalls, stacks, what was missed, the
-- verdict), the --now table, folded stacks (flamegraph.pl, speedscope)
-- and a self-contained SVG flame graph. Pure functions of a report.
local classify = require("denet.offcpu.classify")
local stacks = require("denet.stacks")
local util = require("denet.util")

local M = {}

local duration_text = classify.duration_text

-- A writer of formatted lines into list out.
local function writer(out)
  return function(fmt, ...)
    out[#out + 1] = string.format(fmt, ...)
  end
end

--- The text of a --now report: a table of the threads, the verdict, then
--- each blocked thread's stack (kernel frames first, as the leaf).
function M.now_text(report)
  local out = {}
  local w = writer(out)
  w("%-8s %-8s %-16s %5s %12s  %-9s %-16s %s", "PID", "TID", "COMM", "STATE", "BLOCKED FOR", "CATEGORY", "SYSCALL",
    "WHERE")
  for _, t in ipairs(report.threads) do
    if t.blocked_for_us then
      w("%-8d %-8d %-16s %5s %12s  %-9s %-16s %s", t.pid, t.tid, t.comm, t.state, duration_text(t.blocked_for_us),
        t.category, t.syscall ~= "" and t.syscall or "-", t.site or "?")
    else
      w("%-8d %-8d %-16s %5s %12s  %-9s %-16s %s", t.pid, t.tid, t.comm, t.state, "running", "-", "-", "-")
    end
  end
  w("")
  w("Verdict: %s", report.verdict)
  for _, t in ipairs(report.threads) do
    if t.blocked_for_us and #t.frames > 0 then
      w("")
      w("Thread %d (%s) of %d, %s for %s, %s%s:", t.tid, t.comm, t.pid, t.state, duration_text(t.blocked_for_us),
        t.category, t.syscall ~= "" and (" in " .. t.syscall) or "")
      for j = #t.frames, 1, -1 do
        w("    %s", t.frames[j])
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

--- Folded stacks: "comm;user frames;-;kernel frames value_us" per line.
-- A name in a folded line: ';' separates frames and a line ends the record,
-- and a thread may name itself with either (prctl PR_SET_NAME).
local function folded_name(name)
  return (tostring(name):gsub(";", ":"):gsub("[\r\n]", " "))
end

function M.folded(report)
  local lines = {}
  for _, s in ipairs(report.stacks) do
    local parts = { folded_name(s.comm) }
    for _, f in ipairs(s.frames) do
      parts[#parts + 1] = folded_name(f)
    end
    lines[#lines + 1] = table.concat(parts, ";") .. " " .. math.floor(s.us + 0.5)
  end
  return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
end

local COLORS = {
  sleep = "#7fb3d5", lock = "#e74c3c", io = "#e67e22", net = "#27ae60", ipc = "#8e44ad", poll = "#16a085",
  paging = "#d4ac0d", runqueue = "#95a5a6", other = "#bdc3c7",
}

local function xml(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

--- A self-contained SVG off-CPU flame graph: one box per frame, width in
--- proportion to time, coloured by category, hover titles with the time
--- and share.
function M.svg(report, title)
  -- merge stacks into a tree: root -> comm -> frames
  local root = { name = "all", us = 0, kids = {}, order = {} }
  for _, s in ipairs(report.stacks) do
    local node = root
    root.us = root.us + s.us
    local path = { s.comm }
    for _, f in ipairs(s.frames) do
      path[#path + 1] = f
    end
    for _, name in ipairs(path) do
      local k = node.kids[name]
      if not k then
        k = { name = name, us = 0, kids = {}, order = {}, cats = {} }
        node.kids[name] = k
        node.order[#node.order + 1] = k
      end
      k.us = k.us + s.us
      k.cats[s.category] = (k.cats[s.category] or 0) + s.us
      node = k
    end
  end
  local width, row = 1200, 17
  local maxdepth = 0
  local boxes = {}
  local function walk(node, x, depth)
    maxdepth = math.max(maxdepth, depth)
    table.sort(node.order, function(a, b)
      return a.name < b.name
    end)
    local cx = x
    for _, k in ipairs(node.order) do
      local w = root.us > 0 and k.us / root.us * (width - 20) or 0
      if w >= 0.3 then
        boxes[#boxes + 1] = { node = k, x = cx, w = w, depth = depth }
        walk(k, cx, depth + 1)
      end
      cx = cx + w
    end
  end
  walk(root, 10, 1)
  local height = (maxdepth + 2) * row + 40
  local out = {
    string.format('<?xml version="1.0" standalone="no"?>\n<svg version="1.1" width="%d" height="%d" '
      .. 'xmlns="http://www.w3.org/2000/svg">', width, height),
    string.format('<rect x="0" y="0" width="%d" height="%d" fill="#fdfdfd"/>', width, height),
    string.format('<text x="%d" y="24" font-family="Verdana" font-size="17" text-anchor="middle">%s</text>',
      width / 2, xml(title or "Off-CPU Time Flame Graph")),
    string.format('<text x="10" y="%d" font-family="Verdana" font-size="12">width = off-CPU time (us); total %d us'
      .. '</text>', height - 8, math.floor(root.us)),
  }
  for _, b in ipairs(boxes) do
    local k = b.node
    local cat, best = "other", -1
    for c, us in pairs(k.cats) do
      if us > best then
        cat, best = c, us
      end
    end
    local color = k.name == "-" and "#cccccc" or COLORS[cat] or COLORS.other
    local y = height - 30 - b.depth * row
    local label = ""
    local chars = math.floor((b.w - 6) / 7)
    if chars >= 3 then
      label = #k.name <= chars and k.name or (k.name:sub(1, chars - 2) .. "..")
    end
    out[#out + 1] = string.format('<g><title>%s (%d us, %.2f%%, %s)</title><rect x="%.1f" y="%d" width="%.1f" '
      .. 'height="%d" fill="%s" rx="2"/><text x="%.1f" y="%d" font-family="Verdana" font-size="11">%s</text></g>',
      xml(k.name), math.floor(k.us), 100 * k.us / math.max(root.us, 1e-9), cat, b.x, y, b.w, row - 1, color,
      b.x + 3, y + 12, xml(label))
  end
  out[#out + 1] = "</svg>\n"
  return table.concat(out, "\n")
end

-- The threads table: wall, on-CPU and off-CPU time, by category.
local function threads_text(w, report)
  w("%-8s %-8s %-16s %10s %10s %10s %6s  %s", "PID", "TID", "COMM", "WALL ms", "ONCPU ms", "OFFCPU ms", "OFF%",
    "BY CATEGORY (ms)")
  for _, t in ipairs(report.threads) do
    local cs = {}
    for _, c in ipairs(util.by_value(t.by_category)) do
      cs[#cs + 1] = string.format("%s %.1f", c[1], c[2] / 1000)
    end
    w("%-8d %-8d %-16s %10.1f %10.1f %10.1f %5.0f%%  %s", t.pid, t.tid, t.comm, t.wall_us / 1000, t.oncpu_us / 1000,
      t.offcpu_us / 1000, 100 * t.share, table.concat(cs, ", "))
  end
end

-- Call sites, syscalls and the top stacks.
local function places_text(w, report, top)
  w("Top blocking call sites:")
  for i = 1, math.min(top, #report.sites) do
    local s = report.sites[i]
    w("  %10.1f ms %6d blocks  %-9s %s (%s)", s.us / 1000, s.count, s.category, s.site, s.comm)
  end
  if #report.syscalls > 0 then
    w("")
    w("%-20s %8s %12s %12s", "SYSCALL", "BLOCKS", "TOTAL ms", "MAX ms")
    for _, s in ipairs(report.syscalls) do
      w("%-20s %8d %12.1f %12.1f", s.name, s.blocks, s.us / 1000, s.max_us / 1000)
    end
  end
  w("")
  w("Top stacks:")
  for i = 1, math.min(top, #report.stacks) do
    local s = report.stacks[i]
    w("  %s %d (tid %d): %.1f ms in %d blocks, %s%s", s.comm, s.pid, s.tid, s.us / 1000, s.count, s.category,
      s.syscall ~= "" and (" in " .. s.syscall) or "")
    local lines = s.user_lines or {}
    for j = #s.frames, 1, -1 do
      local l = lines[j]
      local f = s.frames[j]
      -- (a Python frame's label has its line already)
      local shown = l and l ~= "" and f:sub(-#l - 3) ~= " (" .. l .. ")"
      w("      %s%s", f, shown and (" (" .. l .. ")") or "")
    end
  end
end

-- What the report could not see, one paragraph each.
local function unseen_text(w, report)
  if report.lost_stacks > 0 then
    local why, parts = report.lost_stacks_why or {}, {}
    for _, r in ipairs(stacks.LOST_WHY) do
      if (why[r[1]] or 0) > 0 then
        parts[#parts + 1] = string.format("%d %s", why[r[1]], r[2])
      end
    end
    w("")
    w("%d stacks could not be read (shown as [Missed ... Stack]): %s", report.lost_stacks,
      table.concat(parts, ", "))
  end
  if (report.truncated_stacks or 0) > 0 then
    w("")
    w("%d blocks have a user stack that stops short of the entry point (shown from [truncated]): a frame whose "
      .. "rule the walk cannot apply, in a file without an unwind table%s, or a stack read that faulted",
      report.truncated_stacks, (report.unwind.dropped or 0) > 0 and string.format(" (%d files' tables dropped "
      .. "for the cap, --unwind-max-mb)", report.unwind.dropped) or "")
  end
  if (report.missed_switches or 0) > 0 then
    w("")
    w("%d context switches were not seen (the kernel skipped the program while another BPF program or a map "
      .. "operation held that CPU): blocks around them are missing", report.missed_switches)
  end
  if (report.unended_blocks or 0) > 0 then
    w("")
    w("%d blocks are missing: the switch that ended them was not seen", report.unended_blocks)
  end
  if (report.lost_blocks or 0) > 0 then
    w("")
    w("%d blocks could not be stored (the kernel's map of blocks was full or busy): they are missing from the "
      .. "totals", report.lost_blocks)
  end
end

--- The human report: threads, call sites, syscalls, top stacks (`top`
--- of each, default 5), what was not seen, the verdict.
function M.text(report, top)
  local out = {}
  local w = writer(out)
  w("Off-CPU time over %.2f s", report.duration_us / 1e6)
  w("")
  threads_text(w, report)
  w("")
  places_text(w, report, top or 5)
  unseen_text(w, report)
  w("")
  w("Verdict: %s", report.verdict)
  return table.concat(out, "\n") .. "\n"
end

return M
