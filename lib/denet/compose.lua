-- denet.compose: one program set from feature descriptors (the only place
-- that knows how BPF parts combine).
--
-- Each feature declares its BPF part once, in its descriptor
-- (lib/denet/features/<name>.lua): the file in bpf-src/, the parts it
-- needs, its place in the program (order), the flags it brings, for what
-- the running kernel may lack the feature it requires and the variant to
-- compile instead, and the config map its run-time values go into.
-- build() takes the features a caller wants (with their options) and
-- scripts' own text, closes over what they need, orders them, picks every
-- variant from denet.kernel, compiles one program, and writes each
-- feature's config map before the probes are attached.
--
-- Why one program: libbcc allows one TRACEPOINT_PROBE per tracepoint in a
-- program, so shared probes (sched_switch, raw_syscalls) are parts that
-- call the hooks of the features composed before them (-DDN_HOOK_*).
local errors = require("denet.errors")
local features = require("denet.features")
local kernel = require("denet.kernel")

local M = {}

-- The BPF part of feature `name` (its descriptor's bpf).
local function part_of(name, level)
  if not features.known(name) then
    error(string.format("compose: no BPF part named '%s'", tostring(name)), level or 3)
  end
  local p = features.get(name).bpf
  if not p then
    error(string.format("compose: feature '%s' has no BPF part", name), level or 3)
  end
  return p
end

local TEXT_ORDER = 60


local note = require("denet.util").note_once

-- The first kernel feature of list the kernel lacks, or nil.
local function missing(list)
  for _, f in ipairs(list or {}) do
    if not kernel.has(f) then
      return f
    end
  end
end

local function feature_line(name)
  for _, f in ipairs(kernel.LIST) do
    if f.name == name then
      local off = kernel.disabled()[name]
      -- ("has no the BPF ring buffer": the article goes)
      return string.format("%s %s (%s)", off and "DENET_DISABLE turns off" or "this kernel has no",
        off and f.what or (f.what:gsub("^the ", "")), off and name or (f.since .. "+"))
    end
  end
  return name
end

--- The parts of a program: names closed over `needs`, in order.
function M.closure(names)
  local set, list = {}, {}
  local function add(n)
    if set[n] then
      return
    end
    local p = part_of(n, 4)
    set[n] = true
    for _, d in ipairs(p.needs or {}) do
      add(d)
    end
    list[#list + 1] = n
  end
  for _, n in ipairs(names) do
    add(n)
  end
  table.sort(list, function(a, b)
    return part_of(a).order < part_of(b).order
  end)
  return list, set
end

--- Which flags the parts give, after the kernel's features: returns the
--- flags and the notes of every fallback taken. requested: flags asked
--- for by the caller (options of the parts are checked here).
function M.plan(names, requested)
  local list, set = M.closure(names)
  local flags, notes, dropped = {}, {}, {}
  for _, n in ipairs(list) do
    local p = part_of(n)
    local cf = type(p.cflags) == "function" and p.cflags(set) or p.cflags or {}
    for _, f in ipairs(cf) do
      flags[#flags + 1] = f
    end
    for _, v in ipairs(p.variants or {}) do
      local lack = missing(v.requires)
      if lack then
        for _, f in ipairs(v.otherwise.cflags or {}) do
          flags[#flags + 1] = f
        end
        notes[#notes + 1] = string.format("%s: %s", feature_line(lack), v.otherwise.note)
      end
    end
  end
  for _, n in ipairs(list) do
    for _, o in ipairs(part_of(n).options or {}) do
      local asked = false
      for _, f in ipairs(requested or {}) do
        asked = asked or f == o.flag
      end
      local lack = asked and missing(o.requires)
      if lack then
        dropped[o.flag] = true
        for _, a in ipairs(o.also or {}) do
          dropped[a] = true
        end
        notes[#notes + 1] = string.format("%s: %s", feature_line(lack), o.note)
      end
    end
  end
  for _, f in ipairs(requested or {}) do
    if not dropped[f] then
      flags[#flags + 1] = f
    end
  end
  return flags, notes, list, set
end

local Program = {}
Program.__index = Program

--- Was the program built with flag f (e.g. "-DDN_TREE_PERF")?
function Program:has_flag(f)
  return self.flag_set[f] == true
end

local BUILD_OPTS = { "features", "parts", "text", "cflags", "name", "before_attach", "autoattach" }

-- The parts a build asks for (features with options, and parts with
-- none), and the flags their options give, before the kernel's say.
local function asked(spec)
  local names, opts_of, flags = {}, {}, {}
  for _, n in ipairs(spec.parts or {}) do
    names[#names + 1] = n
  end
  for n, o in pairs(spec.features or {}) do
    names[#names + 1] = n
    opts_of[n] = o
  end
  table.sort(names) -- (features is a map: the same program whatever its order)
  for _, n in ipairs(names) do
    local d = features.known(n) and features.get(n)
    if d and d.plan then
      for _, f in ipairs(d.plan(opts_of[n] or {})) do
        flags[#flags + 1] = f
      end
    end
  end
  for _, f in ipairs(spec.cflags or {}) do
    flags[#flags + 1] = f
  end
  return names, opts_of, flags
end

-- Write the config map of every part with one, from its feature's options.
local function write_configs(bpf, set, opts_of)
  for n in pairs(set) do
    local cfg = features.get(n).config
    if cfg then
      bpf:get_table(cfg.map):set(0, cfg.values(opts_of[n] or {}))
      if cfg.write then
        cfg.write(bpf, opts_of[n] or {})
      end
    end
  end
end

--- Build one program. spec.features: { name = options } of the features
--- wanted (their descriptors' plan() and config take the options);
--- spec.parts: names of more parts, with no options; spec.text: { name,
--- text } items of a script's own BPF C (compiled after the parts it
--- uses, before the shared sched_switch probe); spec.cflags: more flags;
--- spec.name: for diagnostics; spec.before_attach(bpf): called once the
--- program is loaded and the config maps written, before its probes are
--- attached; spec.autoattach = false: load only. Notes of fallbacks are
--- written once to stderr. Returns the program: .bpf (a denet.bpf
--- object), .parts (the set), .options (each feature's), :has_flag(f).
function M.build(spec)
  errors.check_opts("compose.build", spec, BUILD_OPTS)
  local BPF = require("denet.bpf")
  local names, opts_of, requested = asked(spec)
  local flags, notes, list, set = M.plan(names, requested)
  for _, n in ipairs(notes) do
    note(n)
  end
  local items = {}
  for _, n in ipairs(list) do
    items[#items + 1] = { order = part_of(n).order, part = part_of(n).file }
  end
  for i, t in ipairs(spec.text or {}) do
    items[#items + 1] = { order = t.order or TEXT_ORDER, seq = i, part = { name = t.name, text = t.text } }
  end
  table.sort(items, function(a, b)
    if a.order ~= b.order then
      return a.order < b.order
    end
    return (a.seq or 0) < (b.seq or 0)
  end)
  local parts = {}
  for _, it in ipairs(items) do
    parts[#parts + 1] = it.part
  end
  local flag_set = {}
  for _, f in ipairs(flags) do
    flag_set[f] = true
  end
  local bpf = BPF.new{ text = BPF.compose(parts), cflags = flags, name = spec.name or "denet",
    autoattach = spec.autoattach, before_attach = function(b)
      write_configs(b, set, opts_of)
      if flag_set["-DDN_DWARF_UNWIND"] then
        -- the user stack walker's chain of tail calls, before any switch,
        -- and what feeds it (kept on the program: features load the
        -- processes they trace into it before the probes go live)
        local dwarf = require("denet.stacks.dwarf")
        dwarf.arm(b, flag_set["-DDN_SWITCH_RAW"], flag_set["-DDN_PYTHON"])
        b.unwinder = dwarf.start(b)
        if flag_set["-DDN_PYTHON"] then
          -- the interpreters among the processes loaded, and their code
          b.python = require("denet.stacks.python").start(b)
          b.unwinder.python = b.python
        end
      end
      if spec.before_attach then
        spec.before_attach(b)
      end
    end }
  return setmetatable({ bpf = bpf, parts = set, flags = flags, flag_set = flag_set, notes = notes,
    options = opts_of }, Program)
end

return M
