-- fnlen.lua FILE...: functions longer than 80 lines, in Lua and C files
-- (tools/lint.sh runs it over lib/, scripts/, host/ and bpf-src/). A
-- function may be longer when a comment at its head says why: a comment
-- line right above it starting "Long:" (`-- Long: one table of ...`,
-- `/* Long: ... */`). Prints "file:line: name is N lines" for each other
-- one and exits 1 when there is any. Run with luajit (or denet script).
local MAX = 80

-- The lines of a file.
local function lines_of(path)
  local out = {}
  for l in io.lines(path) do
    out[#out + 1] = l
  end
  return out
end

-- Is there a "Long:" comment in the comment block right above line i?
local function excused(lines, i)
  local j = i - 1
  while j >= 1 and (lines[j]:match("^%s*%-%-") or lines[j]:match("^%s*/?%*") or lines[j]:match("^%s*//")) do
    if lines[j]:match("^%s*%-%-%-?%s*Long:") or lines[j]:match("^%s*/?%*+%s*Long:") then
      return true
    end
    j = j - 1
  end
  return false
end

-- Lua: (first line, last line) of every function, from a scan that skips
-- strings and comments and matches block keywords.
local function lua_functions(src)
  local i, n, line = 1, #src, 1
  local stack, out = {}, {}
  local function skip_to(j)
    for _ in src:sub(i, j):gmatch("\n") do
      line = line + 1
    end
    i = j + 1
  end
  while i <= n do
    local c = src:sub(i, i)
    local long = (c == "[" and src:match("^%[(=*)%[", i))
      or (src:sub(i, i + 1) == "--" and src:match("^%-%-%[(=*)%[", i))
    if long then
      local close = "]" .. long .. "]"
      local j = src:find(close, i, true) or n
      skip_to(j + #close - 1)
    elseif src:sub(i, i + 1) == "--" then
      i = (src:find("\n", i, true) or n + 1)
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n and src:sub(j, j) ~= c do
        j = j + (src:sub(j, j) == "\\" and 2 or 1)
      end
      skip_to(j)
    elseif c:match("[%a_]") then
      local w = src:match("^[%w_]+", i)
      local prev = i > 1 and src:sub(i - 1, i - 1) or ""
      if prev ~= "." and prev ~= ":" then
        if w == "function" then
          stack[#stack + 1] = { kind = "function", line = line, name = src:match("^function%s*([%w_.:]*)", i) }
        elseif w == "do" or w == "if" or w == "repeat" then
          stack[#stack + 1] = { kind = w, line = line }
        elseif w == "end" or w == "until" then
          local top = table.remove(stack)
          if top and top.kind == "function" then
            out[#out + 1] = { first = top.line, last = line, name = top.name }
          end
        end
      end
      i = i + #w
    else
      if c == "\n" then
        line = line + 1
      end
      i = i + 1
    end
  end
  return out
end

-- C (the kernel's style, as .clang-format keeps it): a body opens with "{"
-- alone at column 0 and closes with "}" alone at column 0; the signature
-- is the lines above, back to one at column 0.
local function c_functions(lines)
  local out = {}
  for i, l in ipairs(lines) do
    if l == "{" then
      local s = i - 1
      while s > 1 and lines[s]:match("^%s") do
        s = s - 1
      end
      local j = i + 1
      while j <= #lines and lines[j] ~= "}" do
        j = j + 1
      end
      out[#out + 1] = { first = s, last = j, name = (lines[s]:match("([%w_]+)%s*%(") or lines[s]) }
    end
  end
  return out
end

local bad = 0
for _, path in ipairs(arg) do
  local lines = lines_of(path)
  local fns
  if path:match("%.lua$") then
    local f = assert(io.open(path))
    fns = lua_functions(f:read("*a"))
    f:close()
  else
    fns = c_functions(lines)
  end
  for _, fn in ipairs(fns) do
    local len = fn.last - fn.first + 1
    if len > MAX and not excused(lines, fn.first) then
      bad = bad + 1
      print(string.format("%s:%d: %s is %d lines (at most %d, or a 'Long:' comment saying why)", path, fn.first,
        fn.name ~= "" and fn.name or "a function", len, MAX))
    end
  end
end
os.exit(bad > 0 and 1 or 0)
