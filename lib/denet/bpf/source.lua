-- denet.bpf.source: BPF C made ready for libbcc, as pure text rewriting
-- (tests/unit/source_spec.lua): quoted #includes put in place (read
-- through the trust check, so what was checked is what is compiled),
-- parts joined into one program with #line markers, ring buffer outputs
-- rewritten to count what they drop, line numbers put back after
-- libbcc's insertions, clang's diagnostics tidied, and the program type a
-- function's name asks for.
local core = require("denet.core")
local errors = require("denet.errors")

local M = {}

--- BPF C is code a privileged denet hands to the kernel: read it through
--- the same ownership check as Lua files (host/dn_trust.c); a refusal is
--- a user error.
function M.read_file(path)
  local s, err = core.trust_read(path)
  if not s then
    errors.raise((err:gsub("^cannot read ", "cannot read BPF source ")))
  end
  return s
end

--- The folder of a path ("." for a bare name).
function M.dirname(p)
  return p:match("^(.*)/[^/]*$") or "."
end

--- The folders clang would search for #include "x": -iquote and -I ones.
function M.quote_dirs(cflags)
  local dirs, i = {}, 1
  while i <= #cflags do
    local f = cflags[i]
    local d = f:match("^%-iquote(.+)$") or f:match("^%-I(.+)$")
    if not d and (f == "-I" or f == "-iquote") then
      i = i + 1
      d = cflags[i]
    end
    dirs[#dirs + 1] = d
    i = i + 1
  end
  return dirs
end

--- Put every quoted #include that names a real file in place, read through
--- the trust check, between #line markers: clang then opens no file of its
--- own (what was checked is what is compiled) and its diagnostics still
--- name file:line. An include is looked for as clang does: beside the file
--- that includes it (basedir; none for text=), then in each of dirs.
--- Includes that name no file (libbcc's virtual headers, system headers
--- with quotes) are left to clang. #pragma once is honoured.
function M.inline_includes(text, name, basedir, dirs, once, depth)
  once, depth = once or {}, depth or 0
  if depth > 32 then
    errors.script(string.format("%s: #include nested more than 32 deep", name))
  end
  local out = {}
  local file, line = name, 0
  for l in (text .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do
    line = line + 1
    local ln, fname = l:match('^%s*#%s*line%s+(%d+)%s*"([^"]*)"')
    local inc = not ln and l:match('^%s*#%s*include%s*"([^"]+)"')
    local path
    if inc then
      local cands = {}
      if inc:sub(1, 1) == "/" then
        cands[1] = inc
      else
        if basedir then
          cands[1] = basedir .. "/" .. inc
        end
        for _, d in ipairs(dirs) do
          cands[#cands + 1] = d .. "/" .. inc
        end
      end
      for _, c in ipairs(cands) do
        local st = core.stat(c)
        if st and not st.dir then
          path = c
          break
        end
      end
    end
    if ln then
      file, line = fname, tonumber(ln) - 1
      out[#out + 1] = l
    elseif path then
      if not once[path] then
        local body = M.read_file(path)
        local pragma
        body, pragma = ("\n" .. body):gsub("\n%s*#%s*pragma%s+once[^\n]*", "\n")
        body = body:sub(2)
        if pragma > 0 then
          once[path] = true
        end
        out[#out + 1] = string.format('#line 1 "%s"', path)
        out[#out + 1] = M.inline_includes(body, path, M.dirname(path), dirs, once, depth + 1)
      end
      out[#out + 1] = string.format('#line %d "%s"', line + 1, file)
    else
      out[#out + 1] = l
    end
  end
  return table.concat(out, "\n")
end


-- clang's diagnostics split into blocks: an "In file included from"
-- chain, then one diagnostic line and its source, caret and notes.
local function diagnostic_blocks(lines)
  local blocks, cur = {}, nil
  for _, line in ipairs(lines) do
    local chain = line:find("^In file included from")
    local kind = line:match(": (%a+): ") or line:match("^(%a+): ")
    if kind ~= "warning" and kind ~= "error" and kind ~= "fatal" then
      kind = nil
    end
    local starts = not cur or (chain and not cur.chain_open) or (kind and cur.kind)
    if starts then
      cur = { lines = {}, chain_open = false }
      blocks[#blocks + 1] = cur
    end
    cur.chain_open = chain and true or false
    if kind and not cur.kind then
      cur.kind = kind
    end
    cur.lines[#cur.lines + 1] = line
  end
  return blocks
end

--- clang's diagnostics, with the virtual file name replaced by ours; when
--- there are errors, the warnings (with their include chains) go, so the
--- errors come first; long reports are cut.
function M.tidy_diagnostics(diag, name)
  diag = diag:gsub("/virtual/main%.c", name)
  local lines = {}
  for line in diag:gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  if diag:find("error:") then
    local kept = {}
    for _, b in ipairs(diagnostic_blocks(lines)) do
      if b.kind ~= "warning" then
        for _, l in ipairs(b.lines) do
          kept[#kept + 1] = l
        end
      end
    end
    lines = kept
  end
  if #lines > 60 then
    local head = {}
    for i = 1, 50 do
      head[i] = lines[i]
    end
    head[#head + 1] = string.format("... (%d more lines)", #lines - 50)
    lines = head
  end
  return table.concat(lines, "\n")
end

--- How many errors clang's diagnostics report.
function M.count_errors(diag)
  local n = 0
  for _ in diag:gmatch("error:") do
    n = n + 1
  end
  return n
end


--- Join BPF C sources into one program text: each part is a file name in
--- bpf-src/ ("tree.c") or { name = ..., text = ... }. A #line directive
--- before each part keeps clang's diagnostics in the part's own lines.
--- TRACEPOINT_PROBE functions must be in the program's main text for
--- libbcc to type their arguments, so shared probes are composed, not
--- #included.
function M.compose(parts)
  local out = {}
  for _, part in ipairs(parts) do
    local name, text
    if type(part) == "table" then
      name, text = part.name or "bpf.c", part.text
    else
      name, text = part, M.read_file(core.root .. "/bpf-src/" .. part)
    end
    out[#out + 1] = string.format('#line 1 "%s"', name)
    out[#out + 1] = text
  end
  return table.concat(out, "\n")
end

-- The ring buffers of a text: name -> index of its loss counter, and the
-- names in order (nil when there is none).
function M.ringbuf_names(text)
  local names, index = {}, {}
  for name in text:gmatch("BPF_RINGBUF_OUTPUT%s*%(%s*([%w_]+)") do
    if not index[name] then
      names[#names + 1] = name
      index[name] = #names - 1
    end
  end
  if #names == 0 then
    return nil
  end
  return index, names
end

-- Ring buffers cannot tell user space what they dropped: a full buffer
-- makes ringbuf_output/ringbuf_reserve fail in the program. Rewrite those
-- calls so each failure also bumps a per-CPU counter per ring buffer
-- (__denet_rb_lost). The counter is declared on the line of the first
-- BPF_RINGBUF_OUTPUT and every rewrite stays on its line, so clang's line
-- numbers still match the user's text. Returns the text and name -> index.
function M.count_ringbuf_losses(text)
  local index, names = M.ringbuf_names(text)
  if not index then
    return text, nil
  end
  for i, name in ipairs(names) do
    local id = tostring(i - 1)
    text = text:gsub("([%w_]*)(" .. name .. "%.ringbuf_output)(%b())", function(pre, call, args)
      if pre ~= "" then
        return nil
      end
      return "({ int __dn_r = " .. call .. args .. "; if (__dn_r) __denet_rb_lost_inc(" .. id
        .. "); __dn_r; })"
    end)
    text = text:gsub("([%w_]*)(" .. name .. "%.ringbuf_reserve)(%b())", function(pre, call, args)
      if pre ~= "" then
        return nil
      end
      return "({ void *__dn_p = " .. call .. args .. "; if (!__dn_p) __denet_rb_lost_inc(" .. id
        .. "); __dn_p; })"
    end)
  end
  local decl = string.format(" BPF_PERCPU_ARRAY(__denet_rb_lost, u64, %d);"
    .. " static __always_inline void __denet_rb_lost_inc(u32 i) {"
    .. " u64 *c = __denet_rb_lost.lookup(&i); if (c) (*c)++; }", #names)
  text = text:gsub("(BPF_RINGBUF_OUTPUT%s*%b()%s*;)", "%1" .. decl, 1)
  return text, index
end

-- libbcc inserts the definition of each tracepoint's argument struct just
-- before its TRACEPOINT_PROBE function, which moves every later line of
-- clang's diagnostics down. A #line directive right after each probe's
-- opening brace puts the numbering back, so errors point at the user's
-- lines. Lines of `text` already carrying #line directives (composed
-- sources) are followed.
function M.fix_lines(text, name)
  local out = {}
  local file, line = name, 0
  local pending = false -- inside a TRACEPOINT_PROBE header, before its '{'
  for l in (text .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do
    line = line + 1
    local ln, fname = l:match('^%s*#%s*line%s+(%d+)%s*"([^"]*)"')
    if ln then
      out[#out + 1] = l
      file, line = fname, tonumber(ln) - 1
    else
      if l:find("TRACEPOINT_PROBE%s*%(") then
        pending = true
      end
      local brace = pending and l:find("{", 1, true)
      if brace then
        pending = false
        out[#out + 1] = l:sub(1, brace)
        out[#out + 1] = string.format('#line %d "%s"', line, file)
        -- spaces keep clang's column numbers right for the rest of the line
        out[#out + 1] = string.rep(" ", brace) .. l:sub(brace + 1)
      else
        out[#out + 1] = l
      end
    end
  end
  return table.concat(out, "\n")
end

-- enum bpf_prog_type of what autoattach loads
local TRACEPOINT, RAW_TRACEPOINT, KPROBE = 5, 17, 2

--- The program type autoattach loads function `fn` as, or nil.
function M.auto_type(fn)
  if fn:match("^tracepoint__") then
    return TRACEPOINT
  elseif fn:match("^raw_tracepoint__") then
    return RAW_TRACEPOINT
  elseif fn:match("^kprobe__") or fn:match("^kretprobe__") then
    return KPROBE
  end
end

--- Read a BPF source file through the trust check: its text, or nil and
--- the one-line refusal (for callers that raise their own errors).
function M.try_read(path)
  return core.trust_read(path)
end

return M
