-- denet.stacks.dwarf: user stacks walked from unwind tables, for binaries
-- built without frame pointers (bpf-src/unwind.c does the walk in the
-- kernel; this module feeds it).
--
-- * Tables: each mapped file's call frame information as rows
--   (core.uw_table, host/dn_unwind.c), built once per file and kept in the
--   cache folder (uw-BUILDID.tab), so the next run starts with it. One
--   table serves every process that maps the file (key: build-id, or
--   device and inode when there is none).
-- * Loading: a file's rows go into dn_uw_pages by 4 KiB page of its
--   addresses; a process's executable mappings into dn_uw_procs (sorted,
--   each with the bias from address to file address and its file's table).
-- * Misses: a walk that meets an address in no mapping it knows copies the
--   stack to user space (dn_uw_miss); it is unwound here with the same
--   rules (M.unwind), and the process's mappings are loaded for the next.
-- * Caps: the tables in the kernel hold at most opts.max_bytes (default
--   256 MiB); past it the files least recently loaded are dropped, and the
--   stacks through them are marked truncated.
local ffi = require("ffi")
local core = require("denet.core")
local records = require("denet.records")
local syms = require("denet.syms")

local M = {}

-- the kinds of rows (dn_records.h)
local C = { DN_UW_STOP = 0, DN_UW_SP = 1, DN_UW_FP = 2, DN_UW_PLT = 3, DN_UW_SIGNAL = 4, DN_UW_END = 5,
  DN_UW_RBP_LOST = -128 }
M.FRAMES = 127 -- DN_UW_FRAMES
local ROW = ffi.typeof("struct dn_uw_row")
local ROW_PTR = ffi.typeof("const struct dn_uw_row *")
local ROW_SIZE = ffi.sizeof(ROW)
local REGION_MAPS = 2 -- DN_UW_REGION_MAPS
local KEY_PTR = ffi.typeof("const struct dn_uw_page_key *")
local KEY_SIZE = ffi.sizeof("struct dn_uw_page_key")
local COPIED = 0x40000000 -- the ids of stacks copied to user space
local EINVAL = 22
-- flags of a stack (unwind.c)
M.F_TRUNC, M.F_NOTABLE, M.F_DEEP, M.F_FAULT = 1, 2, 4, 8

-- files' tables, by key (build-id or dev:ino): { rows (cdata), n, hold
-- (the string the rows live in), segs, why }
local tables = {}
local said = {}

local function header(bid, segs, n)
  local lines = { "DNUW1", bid }
  for _, s in ipairs(segs) do
    lines[#lines + 1] = string.format("%.0f %.0f %.0f", s[1], s[2], s[3])
  end
  lines[#lines + 1] = "rows " .. n
  return table.concat(lines, "\n") .. "\n"
end

-- A table read from the cache folder, or nil.
local function from_cache(bid)
  local cache = require("denet.cache")
  local path = bid ~= "" and cache.enabled() and cache.path("uw-" .. bid .. ".tab")
  local text = path and core.stat(path) and core.trust_read(path)
  if not text or text:sub(1, 6) ~= "DNUW1\n" then
    return nil
  end
  local segs, pos = {}, 7
  local id_line, e = text:match("^([^\n]*)\n()", pos)
  if id_line ~= bid then
    return nil
  end
  pos = e
  while true do
    local line, nx = text:match("^([^\n]*)\n()", pos)
    if not line then
      return nil
    end
    pos = nx
    local n = line:match("^rows (%d+)$")
    if n then
      n = tonumber(n)
      local blob = text:sub(pos)
      if #blob ~= n * ROW_SIZE then
        return nil
      end
      return { rows = ffi.cast(ROW_PTR, blob), n = n, hold = blob, segs = segs, bid = bid }
    end
    local a, b, c = line:match("^(%d+) (%d+) (%d+)$")
    if not a then
      return nil
    end
    segs[#segs + 1] = { tonumber(a), tonumber(b), tonumber(c) }
  end
end

--- The unwind table of the file at path (key: how the file is known, its
--- device and inode; name: how a message names it, path by default):
--- { rows, n, segs, bid } or { why } when its call frame information
--- cannot be read (said once on stderr); nil when path is a mapping in
--- /proc that went before it was opened.
function M.table_of(path, key, name)
  local t = tables[key]
  if t then
    return t
  end
  local bid = core.uw_build_id(path)
  t = bid and bid ~= "" and (tables[bid] or from_cache(bid))
  if not t then
    local rows, b, segs = core.uw_table(path)
    if not rows and segs ~= EINVAL and path:sub(1, 6) == "/proc/" then
      -- (the mapping went, by an exec or an unmap, before it was opened:
      -- nothing is known of the file)
      return nil
    end
    if rows then
      local n = #rows / ROW_SIZE
      t = { rows = ffi.cast(ROW_PTR, rows), n = n, hold = rows, segs = segs, bid = b }
      if b ~= "" and require("denet.cache").enabled() then
        require("denet.cache").put("uw-" .. b .. ".tab", header(b, segs, n) .. rows)
      end
    else
      t = { why = b or "unreadable" }
      name = name or path
      if not said[name] then
        said[name] = true
        io.stderr:write(string.format("denet: no unwind table for %s: %s; its frames are marked truncated\n",
          name, t.why))
      end
    end
  end
  tables[key] = t
  if t.bid and t.bid ~= "" then
    tables[t.bid] = t
  end
  return t
end

--- The index of the row of table t in effect at file address pc, or nil.
local function row_at(t, pc)
  local lo, hi = 0, t.n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if t.rows[mid].pc <= pc then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo > 0 and lo - 1 or nil
end
M.row_at = row_at

local Unwinder = {}
Unwinder.__index = Unwinder

--- The program's tail-call chain: its walker loaded as a program of the
--- sched_switch probe's type and put in dn_uw_progs (before the probes
--- are attached).
function M.arm(bpf, raw, python)
  local BPF = require("denet.bpf")
  local kind = raw and BPF.RAW_TRACEPOINT or BPF.TRACEPOINT
  local progs = bpf:get_table("dn_uw_progs")
  progs:set(0, bpf:load_func("dn_uw_walk", kind))
  if python then
    -- (the Python frames are read first: bpf-src/python.c)
    progs:set(1, bpf:load_func("dn_py_walk", kind))
  end
end

--- Feed the program's unwinder (bpf: a program with -DDN_DWARF_UNWIND):
--- opts.max_bytes caps the tables in the kernel. Returns the unwinder.
function M.start(bpf, opts)
  opts = opts or {}
  local self = setmetatable({ bpf = bpf, pages = bpf:get_table("dn_uw_pages"), procs = bpf:get_table("dn_uw_procs"),
    regions = bpf:get_table("dn_uw_regions"), execs = bpf:get_table("dn_uw_execs"), region_keys = {}, loaded_at = {},
    proc_execs = {}, old_maps = {},
    stacks = bpf:get_table("dn_uw_stacks"), loaded = {}, next_file = 1, bytes = 0, dropped = 0,
    max_bytes = opts.max_bytes or 256 * 2 ^ 20, copied = {}, proc_at = {}, lru = {}, tick = 0,
    page_bytes = ffi.sizeof(bpf:get_table("dn_uw_pages").leaf.ct) + 64 }, Unwinder)
  -- captures of a process's mappings are labelled with its image, so
  -- stacks walked before an exec keep their names
  local execs = self.execs
  syms.image_of = function(pid)
    local ok, n = pcall(execs.get, execs, pid)
    return ok and (n or 0) or nil
  end
  self.buf = bpf:get_table("dn_uw_miss"):open_ring_buffer(function(rec)
    self:on_copy(rec)
  end, { type = records.cname("dn_uw_copy") })
  return self
end

-- Drop the file least recently loaded (its pages), for room.
function Unwinder:drop_oldest()
  local oldest
  for key, f in pairs(self.loaded) do
    if f.id and (not oldest or f.tick < self.loaded[oldest].tick) then
      oldest = key
    end
  end
  if not oldest then
    return false
  end
  local f = self.loaded[oldest]
  local keys = ffi.cast(KEY_PTR, f.keys)
  for i = 0, #f.keys / KEY_SIZE - 1 do
    core.map_delete(self.pages.fd, keys + i)
  end
  self.bytes = self.bytes - f.bytes
  self.dropped = self.dropped + 1
  self.loaded[oldest] = { dropped = true, tick = f.tick }
  return true
end

--- Load table t (of file key, named name in a message) into the kernel:
--- its file id, or 0 when it has none (or no room under the cap, or the
--- kernel refused it).
function Unwinder:load(key, t, name)
  self.tick = self.tick + 1
  local f = self.loaded[key]
  if f and f.id then
    f.tick = self.tick
    return f.id
  elseif f and f.failed then
    return 0
  end
  if not (t and t.rows) then
    return 0
  end
  -- its size, from the pages it makes (counted without writing them)
  local keys = core.uw_load(-1, 0, t.hold)
  local bytes = #keys / KEY_SIZE * self.page_bytes
  while self.bytes + bytes > self.max_bytes and self:drop_oldest() do
  end
  if not keys or self.bytes + bytes > self.max_bytes then
    return 0
  end
  local id = self.next_file
  self.next_file = id + 1
  local why
  keys, why = core.uw_load(self.pages.fd, id, t.hold)
  if not keys then
    -- (the kernel's map full, or its memory cgroup's limit: said once)
    if not self.load_failed then
      self.load_failed = true
      io.stderr:write(string.format("denet: the unwind table of %s could not be loaded into the kernel (%s); "
        .. "its frames are marked truncated\n", name or key, why))
    end
    self.not_loaded = (self.not_loaded or 0) + 1
    self.loaded[key] = { failed = true, tick = self.tick }
    return 0
  end
  self.loaded[key] = { id = id, keys = keys, bytes = bytes, tick = self.tick }
  self.bytes = self.bytes + bytes
  return id
end

-- The executable mappings of /proc/PID/maps: { start, end, pgoff, path,
-- key } sorted by start.
local function exec_maps(pid)
  local text = core.read_file("/proc/" .. pid .. "/maps")
  if not text then
    return nil
  end
  local out = {}
  for s, e, perms, off, dev, ino, path in text:gmatch("(%x+)%-(%x+) (%S+) (%x+) (%S+) (%d+)%s*([^\n]*)") do
    if perms:find("x", 1, true) and path ~= "[vsyscall]" then
      out[#out + 1] = { start = tonumber(s, 16), ["end"] = tonumber(e, 16), pgoff = tonumber(off, 16),
        path = path, key = dev .. ":" .. ino }
    end
  end
  table.sort(out, function(a, b)
    return a.start < b.start
  end)
  return out
end

-- The bias of mapping m of a file whose executable segments are segs:
-- address - bias = the file's address.
local function bias_of(m, segs)
  for _, s in ipairs(segs or {}) do
    if m.pgoff >= s[1] - s[1] % 4096 and m.pgoff < s[1] + s[3] then
      return m.start - (m.pgoff - s[1] + s[2])
    end
  end
  return m.start - m.pgoff
end

--- The executable mappings of process pid now, sorted: { start, end,
--- pgoff, path, key (device:inode), table (its file's, or nil), bias
--- (address - bias = the file's address) }; nil when it is gone.
function M.proc_maps(pid)
  local maps = exec_maps(pid)
  for _, m in ipairs(maps or {}) do
    -- (the mapped file itself, whatever its path says now; or the path,
    -- when the mapping went and the path is still that file)
    local t = m.path:sub(1, 1) == "/" and M.table_of("/proc/" .. pid .. "/map_files/"
      .. string.format("%x-%x", m.start, m["end"]), m.key, m.path)
    if m.path:sub(1, 1) == "/" and not t and core.uw_file_key(m.path) == m.key then
      t = M.table_of(m.path, m.key)
    end
    m.table = t and t.rows and t or nil
    m.bias = bias_of(m, t and t.segs)
  end
  return maps
end

--- Load process pid's executable mappings (and their files' tables) into
--- the kernel. Returns its mappings as loaded, or nil when it is gone.
function Unwinder:load_proc(pid)
  -- (an exec while the mappings are read and loaded: they may be the old
  -- image's, and the kernel's hook dropped the process before they were
  -- in; read again)
  for _ = 1, 3 do
    local execs = self.execs:get(pid)
    local maps = self:_load_proc(pid, execs or 0)
    if not maps or self.execs:get(pid) == execs then
      return maps
    end
    pcall(self.procs.delete, self.procs, pid)
  end
  return nil
end

function Unwinder:_load_proc(pid, execs)
  local maps = M.proc_maps(pid)
  if not maps then
    return nil
  end
  syms.capture(pid)
  -- each 64 KiB region's mappings
  local regions = {}
  for _, m in ipairs(maps) do
    m.file = m.table and self:load(m.key, m.table, m.path) or 0
    -- (a table not in the kernel, past the cap, is none for a copy either:
    -- a stack is the same whichever way it was walked)
    m.table = m.file ~= 0 and m.table or nil
    for g = math.floor(m.start / 65536), math.floor((m["end"] - 1) / 65536) do
      local list = regions[g] or {}
      regions[g] = list
      list[#list + 1] = m
    end
  end
  for g in pairs(self.region_keys[pid] or {}) do
    if not regions[g] then
      pcall(self.regions.delete, self.regions, { tgid = pid, region = g })
    end
  end
  local v = self.regions.leaf.ct()
  for g, list in pairs(regions) do
    ffi.fill(v, ffi.sizeof(v))
    for i = 1, math.min(#list, REGION_MAPS) do
      local m, o = list[i], v.m[i - 1]
      o.start, o["end"], o.bias, o.file = m.start, m["end"], m.bias, m.file
    end
    self.regions:set({ tgid = pid, region = g }, v)
  end
  self.region_keys[pid] = regions
  self.loaded_at[pid] = core.monotonic()
  -- the mappings of the image it left (for copies of its stacks made
  -- before the exec)
  if self.proc_at[pid] and self.proc_execs[pid] ~= execs then
    self.old_maps[pid] = { execs = self.proc_execs[pid], maps = self.proc_at[pid] }
  end
  self.proc_execs[pid] = execs
  -- a new generation: templates of the old mappings no longer match
  self.gen = (self.gen or 0) + 1
  self.procs:set(pid, { gen = self.gen, alias = 0, execs = execs })
  self.proc_at[pid] = maps
  if self.python then
    self.python:process(pid, maps, execs)
  end
  return maps
end

--- Before a held command runs: the tables of its executable (argv0, found
--- on PATH) and of the libraries the loader will map for it are built and
--- loaded, so its first blocks need only its mappings.
function Unwinder:preload(argv0)
  local exe = argv0 and (argv0:find("/", 1, true) and argv0 or core.which(argv0))
  if not exe then
    return
  end
  local files = { exe }
  local ldso = "/lib64/ld-linux-x86-64.so.2"
  local q = "'" .. exe:gsub("'", "'\\''") .. "'"
  local f = core.stat(ldso) and io.popen(ldso .. " --list " .. q .. " 2>/dev/null")
  if f then
    for line in f:lines() do
      local path = line:match("=> (/%S+)") or line:match("^%s*(/%S+) %(")
      files[#files + 1] = path
    end
    f:close()
  end
  for _, path in ipairs(files) do
    local key = core.uw_file_key(path)
    if key then
      self:load(key, M.table_of(path, key), path)
    end
  end
end

--- Process pid exited: its mappings go (the kernel's map of them, and
--- what user space kept).
function Unwinder:forget(pid)
  for g in pairs(self.region_keys[pid] or {}) do
    pcall(self.regions.delete, self.regions, { tgid = pid, region = g })
  end
  pcall(self.procs.delete, self.procs, pid)
  self.region_keys[pid], self.proc_at[pid], self.loaded_at[pid] = nil, nil, nil
  self.proc_execs[pid], self.old_maps[pid] = nil, nil
  if self.python then
    self.python:forget(pid)
  end
end

--- Forget the processes that have exited since the last sweep (their
--- stacks copied to user space were unwound by then: one sweep late).
function Unwinder:sweep()
  local gone = self.exited or {}
  for pid, maps in pairs(gone) do
    if self.proc_at[pid] == maps then
      self:forget(pid)
    end
  end
  self.exited = {}
  for pid, maps in pairs(self.proc_at) do
    if not core.stat("/proc/" .. pid) then
      self.exited[pid] = maps
    end
  end
end

--- A traced process exec'd or begins to be traced: its mappings now.
function Unwinder:exec(pid)
  self:load_proc(pid)
end

--- The mappings read of process pid's image number execs, or nil.
function Unwinder:maps_of(pid, execs)
  if self.proc_execs[pid] == execs then
    return self.proc_at[pid]
  end
  local o = self.old_maps[pid]
  return o and o.execs == execs and o.maps or nil
end

--- The user stack (addresses, leaf first) that the rules of maps (as
--- load_proc gives them) find from ip, sp, bp, reading words with
--- read(addr); and its flags (F_*).
function M.unwind(maps, read, ip, sp, bp)
  local addrs, flags = { ip }, 0
  -- (no rbp known: a rule from it stops the walk)
  local is_return, bp_lost = false, bp == nil
  while #addrs <= M.FRAMES do
    local m
    for _, x in ipairs(maps) do
      if ip >= x.start and ip < x["end"] then
        m = x
        break
      end
    end
    local t = m and m.table
    if not t then
      return addrs, bit.bor(flags, M.F_NOTABLE)
    end
    local i = row_at(t, ip - m.bias - (is_return and 1 or 0))
    local r = i and t.rows[i]
    if not r or r.kind == C.DN_UW_STOP then
      return addrs, bit.bor(flags, M.F_TRUNC)
    elseif r.kind == C.DN_UW_END then
      return addrs, flags
    end
    if r.kind == C.DN_UW_SIGNAL then
      bp, sp, ip = read(sp + 120), read(sp + 160), read(sp + 168)
      if not (bp and sp and ip) then
        return addrs, bit.bor(flags, M.F_FAULT)
      end
      is_return, bp_lost = false, false
    else
      local cfa
      if r.kind == C.DN_UW_SP then
        cfa = sp + r.cfa
      elseif r.kind == C.DN_UW_FP and not bp_lost then
        cfa = bp + r.cfa
      elseif r.kind == C.DN_UW_PLT then
        cfa = sp + 8 + ((ip % 16) >= r.aux and 8 or 0)
      else
        return addrs, bit.bor(flags, M.F_TRUNC)
      end
      local ra = read(cfa - 8)
      if not ra then
        return addrs, bit.bor(flags, M.F_FAULT)
      end
      if r.rbp == C.DN_UW_RBP_LOST then
        bp_lost = true
      elseif r.rbp ~= 0 then
        bp = read(cfa + 8 * r.rbp)
        bp_lost = bp == nil
      end
      sp, ip, is_return = cfa, ra, true
    end
    if ip == 0 then
      return addrs, flags
    end
    addrs[#addrs + 1] = ip
  end
  return addrs, bit.bor(flags, M.F_DEEP)
end

-- the mappings walk() read last, by pid, for a second (a snapshot walks
-- every thread of a process in a row)
local walk_maps = {}

--- The user stack of a thread of process pid, from its saved registers,
--- read through /proc/PID/mem (no ptrace stop): addresses (leaf first) and
--- flags (F_*), as the kernel's walk gives them; nil when the process
--- cannot be read.
function M.walk(pid, ip, sp, bp)
  local now = core.monotonic()
  local c = walk_maps[pid]
  if not c or now - c.at > 1 then
    c = { at = now, maps = M.proc_maps(pid) }
    walk_maps[pid] = c
  end
  local read, close = require("denet.stacks.unwind").memory(pid)
  if not read or not c.maps or not ip or ip == 0 then
    if close then
      close()
    end
    return nil
  end
  local addrs, flags = M.unwind(c.maps, read, ip, sp, bp)
  close()
  return addrs, flags
end

-- A stack copied by the kernel (a struct dn_uw_copy): its process's
-- mappings are loaded (once for a burst of misses), and it is unwound
-- here.
function Unwinder:on_copy(rec)
  local pid, execs = rec.tgid, rec.execs
  local maps = self:maps_of(pid, execs)
  local ip = tonumber(rec.ip)
  local known = false
  for _, m in ipairs(maps or {}) do
    known = known or (ip >= m.start and ip < m["end"])
  end
  -- a copy means the kernel did not know the address: what user space
  -- holds is missing it or stale (the process exec'd since: its old image
  -- may have had something mapped there), so it is read again, once in a
  -- burst of copies
  local fresh = core.monotonic() - (self.loaded_at[pid] or 0) < 0.05
  if not (known and fresh) then
    if not self:load_proc(pid) then
      -- gone before its mappings could be read: its frames in files
      -- mapped since the last read are unknown
      self.gone = (self.gone or 0) + 1
    end
    maps = self:maps_of(pid, execs) or maps
  end
  -- (a copy of an image whose mappings were never read, such as a held
  -- command's before its exec, or one the process left by an exec or its
  -- exit before user space could read it: its first frame only, marked,
  -- and counted)
  if not maps then
    self.unread = (self.unread or 0) + 1
  end
  local sp0, len, data = tonumber(rec.sp), rec.len, rec.data
  local function read(addr)
    local o = addr - sp0
    if o < 0 or o + 8 > len then
      return nil
    end
    return tonumber(ffi.cast("const uint64_t *", data + o)[0])
  end
  local addrs, flags = M.unwind(maps or {}, read, ip, sp0, tonumber(rec.bp))
  self.copied[rec.id] = { addrs = addrs, flags = flags, execs = execs }
end

--- The addresses (leaf first), flags and image number (see
--- denet.syms.at) of stack id (unwind.c's), or nil.
function Unwinder:stack(id)
  if id >= COPIED then
    local c = self.copied[id]
    return c and c.addrs, c and c.flags, c and c.execs
  end
  local v = self.stacks:get(id)
  if not v then
    return nil
  end
  local addrs = {}
  for i = 0, math.min(v.n, M.FRAMES + 1) - 1 do
    addrs[#addrs + 1] = tonumber(v.ip[i])
  end
  return addrs, v.flags, v.execs
end

--- Counters: walks, whole, truncated, copied (unwound in user space),
--- copies_lost, not_stored, frames, reused (stacks reused from templates),
--- wrong (reuses a walk disagreed with, in verify mode), gone (copies of
--- processes that exited before their mappings could be read), unread
--- (copies unwound with no mappings of their image: it was left, by an
--- exec or the exit, before user space read it; the first frame only);
--- files (tables loaded), dropped (for
--- the cap), not_loaded (tables the kernel refused), bytes (of tables in the kernel).
function Unwinder:stats()
  local t = self.bpf:get_table("dn_uw_stats")
  local names = { "walks", "whole", "truncated", "copied", "copies_lost", "not_stored", "frames", "reused",
    "wrong" }
  local out = {}
  for i, n in ipairs(names) do
    out[n] = tonumber(t:sum(i - 1))
  end
  local files = 0
  for _, f in pairs(self.loaded) do
    files = files + (f.id and 1 or 0)
  end
  out.files, out.dropped, out.table_bytes, out.gone = files, self.dropped, self.bytes, self.gone or 0
  out.not_loaded = self.not_loaded or 0
  out.unread = self.unread or 0
  return out
end

M.Unwinder = Unwinder
return M
