-- denet.man: the man page, denet(1), generated from what the code
-- declares: the subcommands (denet.cli), the monitor's options
-- (scripts/monitor.lua, with the features it can add) and the scripts of
-- the registry's features (denet.features), from their specs.
-- `denet man` prints it; the build writes build/denet.1 and installs it.
local core = require("denet.core")
local args_mod = require("denet.args")

local M = {}

-- troff-safe text: backslashes, leading dots and quotes, hyphens
local function esc(s)
  s = tostring(s):gsub("\\", "\\e"):gsub("%-", "\\-")
  s = s:gsub("\n([.'])", "\n\\&%1")
  if s:match("^[.']") then
    s = "\\&" .. s
  end
  return s
end

local function option_items(out, list)
  for _, a in ipairs(list or {}) do
    if not a.hidden then
      local names = {}
      if a.flag then
        names[#names + 1] = "\\fB" .. esc(a.flag) .. "\\fR"
      end
      names[#names + 1] = "\\fB" .. esc(args_mod.long_flag(a)) .. "\\fR"
      local head = table.concat(names, ", ")
      if a.type ~= "bool" then
        head = head .. " \\fI" .. esc(a.metavar or a.name:upper()) .. "\\fR"
      end
      out[#out + 1] = ".TP"
      out[#out + 1] = head
      local help = a.help or ""
      if a.default ~= nil and a.type ~= "bool" then
        help = help .. string.format(" (default %s)", tostring(a.default))
      end
      out[#out + 1] = esc(help)
    end
  end
end

-- the table a built-in script returns (its declarations)
local function spec_of(name)
  local chunk = assert(require("denet.plugins").load_file(core.root .. "/scripts/" .. name .. ".lua"))
  return chunk()
end

--- The man page as troff text.
function M.page()
  local cli = require("denet.cli")
  local out = {
    string.format('.TH DENET 1 "" "denet %s" "User Commands"', core.version),
    ".SH NAME",
    "denet \\- where a program's time and resources go: CPU, memory, I/O, threads, off\\-CPU time and syscalls "
      .. "of a process tree",
    ".SH SYNOPSIS",
  }
  for _, c in ipairs(cli.COMMANDS) do
    out[#out + 1] = ".br"
    out[#out + 1] = "\\fBdenet\\fR " .. esc(c[1])
  end
  out[#out + 1] = ".SH DESCRIPTION"
  out[#out + 1] = "denet embeds LuaJIT and libbcc: every feature is a Lua script that compiles BPF C at run time. "
    .. "\\fBdenet run\\fR and \\fBdenet attach\\fR monitor a process and all its descendants, streaming JSONL; "
    .. "\\fBdenet script offcpu\\fR shows where and why threads block; \\fBdenet script syscalls\\fR counts "
    .. "syscalls, their errors and latency. Users write their own scripts and plugins on the same API."
  out[#out + 1] = ".SH COMMANDS"
  for _, c in ipairs(cli.COMMANDS) do
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fB" .. esc(c[1]) .. "\\fR"
    out[#out + 1] = esc(c[2])
  end
  out[#out + 1] = ".PP"
  out[#out + 1] = esc(cli.SEARCH_NOTE)
  out[#out + 1] = ".PP"
  out[#out + 1] = esc(cli.CACHE_NOTE)
  local monitor = spec_of("monitor")
  out[#out + 1] = ".SH OPTIONS OF RUN, ATTACH AND STATS"
  option_items(out, monitor.args)
  -- every feature that runs alone has its script (denet.features)
  for _, d in ipairs(require("denet.features").list("script")) do
    local name = d.script
    local spec = spec_of(name)
    out[#out + 1] = ".SH SCRIPT " .. name:upper()
    out[#out + 1] = "\\fBdenet script " .. name .. "\\fR [\\fIoptions\\fR] [\\fB\\-\\-\\fR \\fICMD ARGS...\\fR]"
    out[#out + 1] = ".PP"
    out[#out + 1] = esc(spec.description or "")
    option_items(out, spec.args)
    if spec.example then
      out[#out + 1] = ".PP"
      out[#out + 1] = "Example: \\fB" .. esc(spec.example) .. "\\fR"
    end
  end
  out[#out + 1] = ".SH EXIT STATUS"
  out[#out + 1] = "The command's exit status (\\fBrun\\fR), or 0. 1: a bug in a script (file:line and a traceback). "
    .. "2: an error you can act on (one line: no privileges, no kernel headers, a bad flag, a file that cannot "
    .. "be read). 128+signal: interrupted (130 for Ctrl\\-C, 143 for SIGTERM)."
  out[#out + 1] = ".SH ENVIRONMENT"
  out[#out + 1] = ".TP"
  out[#out + 1] = "\\fBDENET_PATH\\fR"
  out[#out + 1] = "More folders of scripts and plugins (after the built\\-ins)."
  out[#out + 1] = ".TP"
  out[#out + 1] = "\\fBDENET_DISABLE\\fR"
  out[#out + 1] = "Kernel features to act as if missing (comma\\-separated: ringbuf, batch, btf, ...), to try the "
    .. "fallbacks of older kernels."
  out[#out + 1] = ".SH FILES"
  out[#out + 1] = esc(core.root) .. "/scripts, ~/.config/denet/scripts: scripts and plugins. "
    .. "/var/cache/denet (or ~/.cache/denet): kernel type headers made from BTF."
  out[#out + 1] = ".SH SEE ALSO"
  out[#out + 1] = "\\fBbpftrace\\fR(8), \\fBperf\\fR(1); the documentation in docs/ of the source: monitor.md, "
    .. "offcpu.md, syscalls.md, plugins.md, lua\\-api.md, export.md, security.md."
  -- an installed denet's data folder, not where this one runs from
  local page = table.concat(out, "\n") .. "\n"
  return (page:gsub(esc(core.root):gsub("%p", "%%%0"), "\\fI$prefix\\fR/share/denet"))
end

return M
