-- denet.stacks: the one stack engine. Every feature that shows stacks
-- (off-CPU tracing, `offcpu --now`, plugins, the REPL) asks it for the BPF
-- flags of the stacks it wants, starts the learners its program was built
-- with, and turns stack ids or addresses into frames through it.
--
--   local stacks = require("denet.stacks")
--   local flags = stacks.cflags{ reuse = "on" }     -- -D flags of bpf-src/offcpu.c
--   local engine = stacks.start(bpf, program)        -- learners (templates, unwind rules)
--   local r = stacks.resolver(bpf, "dn_offcpu_stacks")
--   local uf, mods = r:user(tgid, ustack_id, leaf)   -- root first
--   local kf = r:kernel(kstack_id)
--
-- Its parts: denet.stacks.kernel (kernel stack templates),
-- denet.stacks.user (user stack templates), denet.stacks.unwind (callers
-- found from .eh_frame, in the kernel and through /proc/PID/mem),
-- denet.stacks.frames (names, call sites).
local syms = require("denet.syms")

local M = {}

M.kernel = require("denet.stacks.kernel")
M.user = require("denet.stacks.user")
M.unwind = require("denet.stacks.unwind")
M.frames = require("denet.stacks.frames")
M.dwarf = require("denet.stacks.dwarf")
M.python = require("denet.stacks.python")

M.STACK_NONE = M.frames.STACK_NONE
M.STACK_SNAPSHOT = M.frames.STACK_SNAPSHOT

-- why stacks were not read, in the order reports name them
M.LOST_WHY = {
  { "map_full", "because the stack map was full (raise --stack-storage)" },
  { "collided", "because another stack held their slot of the stack map (raise --stack-storage)" },
  { "fault", "because the walk faulted (user memory paged out, or a frame pointer chain broken)" },
  { "other", "for other reasons" },
}

local CFLAGS_OPTS = { "user_only", "kernel_only", "reuse", "storage", "unwind", "python" }

--- The -D flags of the stacks a tracer wants (bpf-src/offcpu.c): opts.user_only
--- / kernel_only (one kind of stack only), reuse ("on" default: reuse a
--- stack when a thread blocks where it blocked before, checked in the
--- kernel; "off": walk every stack; "verify": reuse and walk, counting
--- disagreements), storage (stack map size), unwind ("dwarf" default: user
--- stacks walked in the kernel from the files' unwind tables, whole
--- without frame pointers; "fp": by frame pointers, with the callers
--- libc's functions hide recovered from .eh_frame), python (false: no
--- Python frames; else, with "dwarf", the frames of CPython 3.11
--- programs, read in the kernel: denet.stacks.python). These change the program's shape; the composer drops
--- what the kernel cannot do, with a note.
function M.cflags(opts)
  require("denet.errors").check_opts("stacks.cflags", opts, CFLAGS_OPTS)
  opts = opts or {}
  local reuse = opts.reuse or "on"
  local dwarf = (opts.unwind or "dwarf") == "dwarf"
  local f = {}
  if opts.user_only then
    f[#f + 1] = "-DDN_NO_KSTACK"
  end
  if opts.kernel_only then
    f[#f + 1] = "-DDN_NO_USTACK"
  elseif dwarf then
    f[#f + 1] = "-DDN_DWARF_UNWIND"
    if opts.python ~= false then
      f[#f + 1] = "-DDN_PYTHON"
    end
  else
    f[#f + 1] = "-DDN_LEAF_UNWIND"
  end
  if opts.storage then
    f[#f + 1] = "-DDN_STACK_STORAGE=" .. tonumber(opts.storage)
    f[#f + 1] = dwarf and not opts.kernel_only and "-DDN_UW_STACKS=" .. tonumber(opts.storage) or nil
  end
  if reuse ~= "off" and not opts.user_only then
    f[#f + 1] = "-DDN_KSTACK_REUSE"
    f[#f + 1] = reuse == "verify" and "-DDN_KSTACK_VERIFY" or nil
  end
  if reuse ~= "off" and not opts.kernel_only then
    f[#f + 1] = "-DDN_USTACK_REUSE"
    f[#f + 1] = reuse == "verify" and "-DDN_USTACK_VERIFY" or nil
  end
  return f
end

local Engine = {}
Engine.__index = Engine

--- Start the learners program (a denet.compose program) was built with:
--- kernel and user stack templates, unwind rules, the unwinder's tables
--- (opts.max_bytes: their cap in the kernel). Returns the engine.
function M.start(bpf, program, opts)
  local self = setmetatable({ bpf = bpf }, Engine)
  if program:has_flag("-DDN_KSTACK_REUSE") then
    self.kt_buf = M.kernel.learner(bpf, program:has_flag("-DDN_SWITCH_RAW"))
  end
  if program:has_flag("-DDN_LEAF_UNWIND") then
    self.leaf_buf = M.unwind.learner(bpf)
  end
  if program:has_flag("-DDN_DWARF_UNWIND") then
    self.dwarf = bpf.unwinder or M.dwarf.start(bpf)
    self.dwarf.max_bytes = opts and opts.max_bytes or self.dwarf.max_bytes
    self.dwarf.reuse = program:has_flag("-DDN_USTACK_REUSE")
    self.python = bpf.python
  elseif program:has_flag("-DDN_USTACK_REUSE") then
    self.ut_buf, self.ut_counts = M.user.learner(bpf)
  end
  return self
end

--- Drop the unwinder's mappings of processes that have exited.
function Engine:sweep()
  if self.dwarf then
    self.dwarf:sweep()
  end
end

--- A held command is about to run (argv0, its program): the unwinder's
--- tables of what it maps, ready before it blocks.
function Engine:preload(argv0)
  if self.dwarf then
    self.dwarf:preload(argv0)
  end
end

--- Process pid exec'd or forked, or begins to be traced: its mappings
--- for the unwinder (when the program walks from unwind tables);
--- unless_loaded: not when they were loaded already.
function Engine:process(pid, unless_loaded)
  if self.dwarf and not (unless_loaded and self.dwarf.proc_at[pid]) then
    self.dwarf:exec(pid)
  end
end

--- Counters of stack reuse and unwinding, for the kinds in use:
--- { kstack_reuse = {...}, ustack_reuse = {...}, leaf_unwind = {...},
--- unwind = {...}, python_frames = {...} } (any may be absent).
function Engine:stats()
  local uw = self.dwarf and self.dwarf:stats()
  local ureuse = self.ut_buf and M.user.stats(self.bpf, self.ut_counts)
  if uw and self.dwarf.reuse then
    -- (templates are made in the kernel: none is late)
    ureuse = { reused = uw.reused, walked = uw.walks, wrong = uw.wrong, late = 0 }
  end
  return { kstack_reuse = self.kt_buf and M.kernel.stats(self.bpf) or nil,
    ustack_reuse = ureuse,
    leaf_unwind = self.leaf_buf and M.unwind.stats(self.bpf) or nil,
    unwind = uw or nil, python_frames = self.python and self.python:stats() or nil }
end

local Resolver = {}
Resolver.__index = Resolver

local RESOLVER_OPTS = { "depth", "user_only", "kernel_only", "unwinder", "python" }

--- Frames of the stack ids of a stack map (table `name` of bpf), cached:
--- opts.depth (frames kept nearest the block), user_only / kernel_only
--- (the other kind was not taken: no frames, not a miss), unwinder (the
--- engine's denet.stacks.dwarf unwinder: user stack ids are its), python
--- (the engine's denet.stacks.python reader: Python stack ids are its).
function M.resolver(bpf, name, opts)
  require("denet.errors").check_opts("stacks.resolver", opts, RESOLVER_OPTS)
  opts = opts or {}
  return setmetatable({ map = bpf:get_table(name), opts = opts, ucache = {}, umods = {}, ulines = {}, usites = {},
    kcache = {}, modules = {} }, Resolver)
end

--- User frames (root first), their in-the-program flags and source lines
--- ("file.c:LINE" or "") of stack id of
--- process tgid; leaf: the frames the walk lost (addresses); pyid: its
--- Python frames' stack (0 or nil: none), put in place of the
--- interpreter's frames that ran them. A kernel
--- thread's (STACK_NONE) are none; a stack not read is "[Missed User
--- Stack]". Fourth: the call site the Python frames give, or nil.
function Resolver:user(tgid, id, leaf, pyid)
  local key = tgid .. ":" .. id .. ":" .. table.concat(leaf or {}, ",") .. ":" .. (pyid or 0)
  local uf = self.ucache[key]
  if not uf then
    local uw = self.opts.unwinder
    local mods, lines = {}, {}
    if uw and id >= 0 then
      local addrs, flags, image = uw:stack(id)
      -- (named from the mappings of the image it was walked in)
      local who = syms.at(tgid, image)
      uf, mods, lines = M.frames.user(who, addrs or {})
      M.frames.modules_of(who, addrs, self.modules)
      if not addrs then
        uf, mods, lines = { "[Missed User Stack]" }, { false }, { "" }
      elseif flags ~= 0 then
        -- the walk stopped short of the entry point
        table.insert(uf, 1, "[truncated]")
        table.insert(mods, 1, false)
        table.insert(lines, 1, "")
      end
    elseif id >= 0 then
      uf, mods, lines = M.frames.user(tgid, self.map:stack_walk(id), nil, leaf)
    elseif self.opts.kernel_only or id == M.STACK_NONE then
      uf = {}
    else
      uf, mods, lines = { "[Missed User Stack]" }, { false }, { "" }
    end
    local pyf, cut
    if self.opts.python and pyid and pyid > 0 then
      pyf, cut = self.opts.python:frames(tgid, pyid)
    end
    if pyf then
      local py
      uf, mods, lines, py = M.python.merge(uf, mods, lines, pyf, cut)
      self.usites[key] = M.python.site(uf, mods, py)
    end
    local depth = self.opts.depth
    uf = M.frames.keep_last(uf, depth)
    self.umods[key], self.ulines[key] = M.frames.keep_last(mods, depth), M.frames.keep_last(lines, depth)
    self.ucache[key] = uf
  end
  return uf, self.umods[key], self.ulines[key], self.usites[key]
end

--- The files of the user frames resolved so far: basename -> { path,
--- build_id }, or nil when none.
function Resolver:files()
  return next(self.modules) and self.modules or nil
end

--- Kernel frames (root first) of stack id; "[Missed Kernel Stack]" when
--- it was not read.
function Resolver:kernel(id)
  local kf = self.kcache[id]
  if not kf then
    if id >= 0 then
      kf = M.frames.kernel(self.map:stack_walk(id), self.opts.depth)
    elseif self.opts.user_only then
      kf = {}
    else
      kf = { "[Missed Kernel Stack]" }
    end
    self.kcache[id] = kf
  end
  return kf
end

--- Frames of a thread a snapshot read (denet.snapshot): user frames and
--- flags, kernel frames, root first, and the user frames' source lines;
--- with a CPython 3.11's frames (read with the native ones) in place of
--- the interpreter's, and the call site they give (fifth).
function M.of_snapshot(t, depth, kernel_only)
  local uf, mods, lines, site = {}, nil, nil, nil
  if not kernel_only and t.uaddrs and #t.uaddrs > 0 then
    uf, mods, lines = M.frames.user(t.pid, t.uaddrs, nil, t.uleaf)
    if t.utrunc then
      -- the walk stopped short of the entry point
      table.insert(uf, 1, "[truncated]")
      table.insert(mods, 1, false)
      table.insert(lines, 1, "")
    end
    if t.pyframes then
      local at
      uf, mods, lines, at = M.python.merge(uf, mods, lines, t.pyframes, t.pycut)
      site = M.python.site(uf, mods, at)
    end
    uf, mods, lines = M.frames.keep_last(uf, depth), M.frames.keep_last(mods, depth), M.frames.keep_last(lines, depth)
  end
  return uf, mods, M.frames.kernel_of_snapshot(t, depth), lines, site
end

--- Read the kernel's symbols now, if not yet (a tracer does it while it
--- waits, so its report does not).
M.load_kernel_symbols = syms.load_kernel

return M
