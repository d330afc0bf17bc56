-- denet.util: the small helpers several modules need, once: rounding,
-- a note said once per run, a path's last part, a CPU list.
-- No dependencies; nothing here touches the kernel.
local M = {}

--- x rounded to `digits` decimals (0 when nil), halves away from zero
--- for positive x (as the original denet's figures round).
function M.round(x, digits)
  local m = 10 ^ (digits or 0)
  return math.floor(x * m + 0.5) / m
end

local said = {}

--- Write "denet: text" to stderr, once per run for each text.
function M.note_once(text)
  if not said[text] then
    said[text] = true
    io.stderr:write("denet: ", text, "\n")
  end
end

--- The last part of a path ("/usr/lib/libc.so.6" -> "libc.so.6"), with
--- `suffix` (".lua") taken off its end when given; nil for nil.
function M.basename(path, suffix)
  if path == nil then
    return nil
  end
  local base = path:match("([^/]+)$") or path
  if suffix and base:sub(-#suffix) == suffix and #base > #suffix then
    base = base:sub(1, -#suffix - 1)
  end
  return base
end

--- The pairs of map as a list of { key, value }, the largest value first
--- (ties by key, so the order is the same from run to run).
function M.by_value(map)
  local list = {}
  for k, v in pairs(map) do
    list[#list + 1] = { k, v }
  end
  table.sort(list, function(a, b)
    if a[2] ~= b[2] then
      return a[2] > b[2]
    end
    return tostring(a[1]) < tostring(b[1])
  end)
  return list
end

--- The numbers of a kernel CPU list ("0-3,5" -> {0,1,2,3,5}); entries
--- that are not numbers or ranges are left out.
function M.cpu_list(s)
  local out = {}
  for part in (s or ""):gmatch("[^,%s]+") do
    local a, b = part:match("^(%d+)%-(%d+)$")
    if a then
      for c = tonumber(a), tonumber(b) do
        out[#out + 1] = c
      end
    elseif part:match("^%d+$") then
      out[#out + 1] = tonumber(part)
    end
  end
  return out
end

return M
