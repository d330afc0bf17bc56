-- denet.cache: where denet keeps what it derives once and reuses across
-- runs: $DENET_CACHE_DIR when set, else /var/cache/denet for root,
-- $XDG_CACHE_HOME/denet or ~/.cache/denet otherwise. Entries are written to a temporary file and
-- renamed into place, so readers never see half an entry and two writers
-- of the same entry are both right.
--
-- Compiled BPF programs are kept here (bpf-KEY.o, written by the host's
-- dn_bpfcache.c), so a later run loads them without clang and LLVM. KEY
-- hashes everything the compile depends on: the final source text, the
-- flags, libbcc (its files), the kernel (release, build, BTF), the kernel
-- headers libbcc compiles against, the possible CPUs (per-CPU map sizes)
-- and denet's version. `--no-cache` (or DENET_NO_CACHE=1) compiles afresh
-- and keeps nothing.
local core = require("denet.core")

local M = {}

local no_cache = os.getenv("DENET_NO_CACHE")
local disabled = no_cache ~= nil and no_cache ~= "" and no_cache ~= "0"

--- Compile every program afresh and keep none (--no-cache).
function M.disable()
  disabled = true
end

--- Are compiled programs taken from and kept in the cache?
function M.enabled()
  return not disabled
end

--- The cache folder (created on first use; nil and why when it cannot be).
function M.dir()
  local d
  local env = os.getenv("DENET_CACHE_DIR")
  if env and env:sub(1, 1) == "/" then
    d = env
  elseif core.ids().euid == 0 then
    d = "/var/cache/denet"
  else
    local xdg, home = os.getenv("XDG_CACHE_HOME"), os.getenv("HOME")
    if xdg and xdg:sub(1, 1) == "/" then
      d = xdg .. "/denet"
    elseif home and home:sub(1, 1) == "/" then
      d = home .. "/.cache/denet"
    else
      return nil, "no cache folder (HOME is not set)"
    end
  end
  if not core.stat(d) then
    os.execute(string.format("mkdir -p -m 0755 '%s' 2>/dev/null", d:gsub("'", "'\\''")))
  end
  local st = core.stat(d)
  if not st or not st.dir then
    return nil, "cannot create the cache folder " .. d
  end
  return d
end

--- The path of entry `name` (it may not exist).
function M.path(name)
  local d, err = M.dir()
  if not d then
    return nil, err
  end
  return d .. "/" .. name
end

--- Write entry `name` with `content` atomically; returns its path, or nil
--- and why.
function M.put(name, content)
  local path, err = M.path(name)
  if not path then
    return nil, err
  end
  local tmp = string.format("%s.tmp.%d", path, core.ids().pid)
  local f, ferr = io.open(tmp, "wb")
  if not f then
    return nil, ferr
  end
  local ok, werr = f:write(content)
  f:close()
  if not ok then
    os.remove(tmp)
    return nil, werr
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    return nil, rerr
  end
  return path
end

-- What every program's key shares: computed once per process.
local environment
local function env_key()
  if environment then
    return environment
  end
  local u = core.uname()
  local parts = { "denet-bpf-cache 1", core.version, u.release, u.version }
  local dir = core.libbcc_dir()
  if dir then
    -- libraries from a package: size and time identify them
    parts[#parts + 1] = core.file_identity(dir .. "/libbcc.so.0", 0) or "no libbcc.so.0"
    parts[#parts + 1] = core.file_identity(dir .. "/libbcc_bpf.so.0", 0) or "no libbcc_bpf.so.0"
  end
  parts[#parts + 1] = core.file_identity("/sys/kernel/btf/vmlinux") or "no BTF"
  local hdr = require("denet.sys").kernel_headers()
  parts[#parts + 1] = hdr or "no headers"
  if hdr then
    for _, f in ipairs({ "/include/generated/autoconf.h", "/include/generated/utsrelease.h", "/Makefile" }) do
      parts[#parts + 1] = core.file_identity(hdr .. f) or "-"
    end
    -- Debian's split layout: the common half is source/
    local src = "/lib/modules/" .. u.release .. "/source"
    parts[#parts + 1] = (core.readlink(src) or "-") .. ":" .. (core.file_identity(src .. "/Makefile") or "-")
  end
  parts[#parts + 1] = core.read_file("/sys/devices/system/cpu/possible") or "?"
  -- features turned off by hand change how kernel types are compiled
  parts[#parts + 1] = os.getenv("DENET_DISABLE") or ""
  environment = table.concat(parts, "\0")
  return environment
end

M._environment = env_key

-- Sources the cache leaves to the compiler: tables shared between
-- programs live in libbcc, and fentry and LSM programs need libbcc's
-- loading. (Task iterators load from the cache: libbcc_bpf's loader finds
-- their BTF target by name.)
local UNCACHEABLE = { '"extern"', '"shared"', '"public"', "_SHARED%(", "_PUBLIC%(", "_PINNED%(", "KFUNC_PROBE",
  "KRETFUNC_PROBE", "KMOD_RET", "LSM_PROBE" }

--- The key of a program (32 hex digits), or nil when the program is not
--- one the cache keeps.
function M.program_key(text, cflags, debug)
  if disabled or (debug and debug ~= 0) then
    return nil
  end
  for _, p in ipairs(UNCACHEABLE) do
    if text:find(p) then
      return nil
    end
  end
  local material = table.concat({ env_key(), table.concat(cflags, "\0"), text }, "\0\0")
  return core.hash(material) .. core.hash(material, "9e3779b97f4a7c15")
end

local PREFIX, SUFFIX = "bpf-", ".o"

--- Where the program of `key` is kept (nil and why without a cache folder).
function M.program_path(key)
  return M.path(PREFIX .. key .. SUFFIX)
end

-- How many programs are kept; past it the least recently written go.
M.MAX_PROGRAMS = 64

--- Remove the oldest kept programs beyond `keep` (M.MAX_PROGRAMS).
function M.prune(keep)
  keep = keep or M.MAX_PROGRAMS
  local d = M.dir()
  local files = {}
  for _, f in ipairs(d and core.list_dir(d) or {}) do
    if f:sub(1, #PREFIX) == PREFIX and f:sub(-#SUFFIX) == SUFFIX then
      local id = core.file_identity(d .. "/" .. f, 0)
      files[#files + 1] = { path = d .. "/" .. f, mtime = tonumber(id and id:match("^%d+:([%d%.]+)")) or 0 }
    end
  end
  if #files <= keep then
    return 0
  end
  table.sort(files, function(a, b)
    return a.mtime > b.mtime
  end)
  local n = 0
  for i = keep + 1, #files do
    if os.remove(files[i].path) then
      n = n + 1
    end
  end
  return n
end

--- One line on stderr about an entry that could not be used.
function M.note(label, why)
  io.stderr:write(string.format("denet: the cached build of %s cannot be used (%s); compiling it again\n", label,
    why))
end

--- The kept programs: { { file, path, label, size, ok, why }, ... } by file
--- name, and the folder (nil and why without one).
function M.programs()
  local d, err = M.dir()
  if not d then
    return nil, err
  end
  local out = {}
  for _, f in ipairs(core.list_dir(d) or {}) do
    if f:sub(1, #PREFIX) == PREFIX and f:sub(-#SUFFIX) == SUFFIX then
      local path = d .. "/" .. f
      local info, why = core.bpf_cache_info(path)
      local st = core.stat(path)
      out[#out + 1] = { file = f, path = path, label = info and info.label, size = st and st.size or 0,
        ok = info ~= nil, why = why, functions = info and info.functions, tables = info and info.tables }
    end
  end
  table.sort(out, function(a, b)
    return a.file < b.file
  end)
  return out, d
end

local function human(n)
  if n >= 1048576 then
    return string.format("%.1f MiB", n / 1048576)
  elseif n >= 1024 then
    return string.format("%.1f KiB", n / 1024)
  end
  return string.format("%d B", n)
end

--- `denet cache ls|clear`
function M.main(args)
  local cmd = args[1]
  local errors = require("denet.errors")
  if cmd == "-h" or cmd == "--help" or cmd == "help" then
    io.write("usage: denet cache ls|clear\n\n"
      .. "Compiled BPF programs are kept so later runs start without the compiler.\n"
      .. "  ls     the kept programs: file, what they were compiled for, size\n"
      .. "  clear  remove them all (and their temporary files)\n"
      .. "Without the cache: denet --no-cache ..., or DENET_NO_CACHE=1.\n")
    return 0
  end
  if cmd ~= "ls" and cmd ~= "clear" or #args > 1 then
    errors.raise("cache: usage: denet cache ls|clear")
  end
  local list, d = M.programs()
  if not list then
    errors.raise("cache: " .. d)
  end
  if cmd == "ls" then
    local total = 0
    print(string.format("%s: %d program%s", d, #list, #list == 1 and "" or "s"))
    for _, e in ipairs(list) do
      total = total + e.size
      print(string.format("  %-40s %-24s %10s  %s", e.file, e.label or "?", human(e.size),
        e.ok and string.format("%d functions, %d tables", e.functions, e.tables) or ("damaged: " .. tostring(e.why))))
    end
    if #list > 0 then
      print(string.format("  total %s", human(total)))
    end
    return 0
  end
  local n, bytes = 0, 0
  for _, f in ipairs(core.list_dir(d) or {}) do
    if f:sub(1, #PREFIX) == PREFIX and (f:sub(-#SUFFIX) == SUFFIX or f:find(SUFFIX .. ".tmp.", 1, true)) then
      local st = core.stat(d .. "/" .. f)
      if os.remove(d .. "/" .. f) then
        n = n + 1
        bytes = bytes + (st and st.size or 0)
      end
    end
  end
  print(string.format("removed %d file%s (%s) from %s", n, n == 1 and "" or "s", human(bytes), d))
  return 0
end

return M
