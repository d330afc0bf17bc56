-- denet.args: command lines from a script's declared arguments. A script
-- (built-in or plugin) declares
--
--   args = {
--     { name = "threshold_ms", type = "number", default = 10, help = "...",
--       flag = "-t", metavar = "MS", required = false },
--     ...
--   }
--
-- and gets `--threshold-ms MS` (and `-t MS`), a generated --help, defaults,
-- type checks, and one clear line for anything wrong. Types: string,
-- number (>= 0), int (>= 0), positive (> 0), bool (a flag, no value),
-- list (comma-separated strings), pids (comma-separated existing PIDs).
-- Everything after `--` is the command (opts.cmd).
local core = require("denet.core")
local errors = require("denet.errors")

local M = {}

local function long_flag(a)
  return a.long or ("--" .. a.name:gsub("_", "-"))
end
M.long_flag = long_flag

local function metavar(a)
  if a.type == "bool" then
    return nil
  end
  return a.metavar or a.name:upper()
end

--- The usage text of a script: "usage: <prog> [options] [-- CMD ARGS...]"
--- and one line per argument, from its declarations.
function M.usage(prog, spec)
  local out = { string.format("usage: %s [options]%s", prog, spec.no_cmd and "" or " [-- CMD ARGS...]") }
  if spec.description then
    out[#out + 1] = ""
    out[#out + 1] = spec.description
  end
  out[#out + 1] = ""
  out[#out + 1] = M.option_lines(spec.args)
  if spec.example then
    out[#out + 1] = ""
    out[#out + 1] = "example: " .. spec.example
  end
  return table.concat(out, "\n") .. "\n"
end

--- The option lines of a usage text (no trailing newline): "  -x, --xx
--- VALUE   help (default ...)", and -h, --help last.
function M.option_lines(list)
  local out = {}
  local rows = {}
  for _, a in ipairs(list or {}) do
    if not a.hidden then
      local names = {}
      if a.flag then
        names[#names + 1] = a.flag
      end
      names[#names + 1] = long_flag(a)
      local left = table.concat(names, ", ")
      local mv = metavar(a)
      if mv then
        left = left .. " " .. mv
      end
      local help = a.help or ""
      if a.default ~= nil and a.type ~= "bool" then
        help = help .. string.format(" (default %s)", tostring(a.default))
      end
      if a.required then
        help = help .. " (required)"
      end
      rows[#rows + 1] = { left, help }
    end
  end
  rows[#rows + 1] = { "-h, --help", "this text" }
  local width = 0
  for _, r in ipairs(rows) do
    width = math.max(width, #r[1])
  end
  width = math.min(width, 30)
  -- help text wrapped to 100 columns
  local pad = string.rep(" ", width + 4)
  local function wrap(text)
    local lines, line = {}, ""
    for word in text:gmatch("%S+") do
      if #line > 0 and #pad + #line + 1 + #word > 100 then
        lines[#lines + 1] = line
        line = word
      else
        line = #line > 0 and (line .. " " .. word) or word
      end
    end
    lines[#lines + 1] = line
    return table.concat(lines, "\n" .. pad)
  end
  for _, r in ipairs(rows) do
    if #r[1] > width then
      out[#out + 1] = "  " .. r[1]
      out[#out + 1] = pad .. wrap(r[2])
    else
      out[#out + 1] = string.format("  %-" .. width .. "s  %s", r[1], wrap(r[2]))
    end
  end
  return table.concat(out, "\n")
end

local function convert(a, flag, v, fail)
  local t = a.type or "string"
  if t == "string" then
    return v
  elseif t == "number" or t == "int" or t == "positive" then
    local n = tonumber(v)
    if not n or n < 0 or (t == "positive" and n <= 0) or (t == "int" and n ~= math.floor(n)) then
      fail(string.format("%s needs a %s number, got '%s'", flag,
        t == "positive" and "positive" or (t == "int" and "non-negative whole" or "non-negative"), v))
    end
    return n
  elseif t == "list" then
    local list = {}
    for item in v:gmatch("[^,]+") do
      list[#list + 1] = item
    end
    return list
  elseif t == "pids" then
    local list = {}
    for p in v:gmatch("[^,]+") do
      local pid = tonumber(p)
      if not pid or not core.read_stat(pid) then
        errors.raise(string.format("no such process: %s", p))
      end
      list[#list + 1] = pid
    end
    return list
  end
  error("denet.args: unknown type " .. tostring(t), 0)
end

--- Parse argv (a list) against spec.args. Returns opts: each argument by
--- name (its default when absent), opts.cmd (after `--`), opts.help (-h).
--- Bad input raises a user error: "<message> (see <prog> --help)".
--- spec.repeatable: names of value arguments that may be given more than
--- once (their values are collected in a list).
function M.parse(prog, spec, argv)
  local function fail(msg)
    errors.raise(string.format("%s (see %s --help)", msg, prog))
  end
  local by_flag = {}
  for _, a in ipairs(spec.args or {}) do
    by_flag[long_flag(a)] = a
    if a.flag then
      by_flag[a.flag] = a
    end
    for _, alias in ipairs(a.aliases or {}) do
      by_flag[alias] = a
    end
  end
  local o = { cmd = {} }
  local i = 1
  while i <= #argv do
    local s = argv[i]
    if s == "--" then
      for j = i + 1, #argv do
        o.cmd[#o.cmd + 1] = argv[j]
      end
      break
    elseif s == "-h" or s == "--help" then
      o.help = true
    else
      local name, inline = s:match("^(%-%-[%w%-]+)=(.*)$")
      local a = by_flag[name or s]
      if not a then
        fail(string.format("unknown argument '%s'", s))
      end
      local flag = name or s
      if a.type == "bool" then
        if inline then
          fail(string.format("option %s takes no value", flag))
        end
        o[a.name] = true
      else
        local v = inline
        if v == nil then
          v = argv[i + 1]
          if v == nil then
            fail(string.format("option %s needs a value", flag))
          end
          i = i + 1
        end
        local val = convert(a, flag, v, fail)
        if a.repeatable then
          o[a.name] = o[a.name] or {}
          table.insert(o[a.name], val)
        else
          o[a.name] = val
        end
      end
    end
    i = i + 1
  end
  if o.help then
    return o
  end
  for _, a in ipairs(spec.args or {}) do
    if o[a.name] == nil then
      if a.required then
        fail(string.format("missing %s", long_flag(a)))
      end
      o[a.name] = a.default
    end
  end
  if spec.no_cmd and #o.cmd > 0 then
    fail("takes no command")
  end
  return o
end

--- Parse "key=value,key=value" (the --plugin NAME:ARGS form) into an argv
--- list for parse(): { "--key", "value", ... }.
function M.from_pairs(text)
  local argv = {}
  for item in (text or ""):gmatch("[^,]+") do
    local k, v = item:match("^([%w_%-]+)=(.*)$")
    if k then
      argv[#argv + 1] = "--" .. k:gsub("_", "-")
      argv[#argv + 1] = v
    else
      argv[#argv + 1] = "--" .. item:gsub("_", "-")
    end
  end
  return argv
end

return M
