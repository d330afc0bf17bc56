-- denet.compose: one program set from declared BPF parts.
--
-- Each feature declares its BPF C once, here: the file in bpf-src/, the
-- parts it needs, where it goes in the program (order), the flags it
-- brings, and, for what the running kernel may lack, the feature it
-- requires and the variant to compile instead. build() takes the parts a
-- caller wants (and scripts' own text), closes over what they need, orders
-- them, picks every variant from denet.features, and compiles one program.
-- Nothing else in denet knows how parts combine.
--
-- Why one program: libbcc allows one TRACEPOINT_PROBE per tracepoint in a
-- program, so shared probes (sched_switch, raw_syscalls) are parts that
-- call the hooks of the features composed before them (-DDN_HOOK_*).
local core = require("denet.core")
local features = require("denet.features")

local M = {}

-- What raw tracepoints need of kernel structs, from the BTF (remembered
-- per kernel): nil without BTF or raw tracepoints (DENET_DISABLE can turn
-- either off). Attached as raw tracepoints, probes detach at once; as perf
-- events each tracepoint's detach waits for RCU grace periods (~50-75 ms).
local function raw_facts()
  if not features.has("raw_tracepoint") or not features.has("btf") then
    return nil
  end
  local btf = require("denet.btf")
  local f = { pid = btf.offset_of("task_struct", "pid"), filename = btf.offset_of("linux_binprm", "filename") }
  if not f.pid then
    return nil
  end
  for _, tp in ipairs({ "task_newtask", "sched_process_exec", "sched_process_exit", "sched_switch" }) do
    f[tp] = btf.raw_tp_nargs(tp)
  end
  return f
end

--- The parts. Fields: file (in bpf-src/), order (smaller first; scripts'
--- text goes at 60), needs (parts pulled in with it), cflags (always, when
--- present; a function(set) may add more, set: the parts composed),
--- variants ({ requires = {features},
--- otherwise = { cflags, note } }: compiled instead when one is missing),
--- options ({ flag, also, requires, note }: a flag callers may ask for,
--- dropped with the note when a required feature is missing).
M.PARTS = {
  tree = {
    file = "tree.c",
    order = 10,
    cflags = function()
      local raw = raw_facts()
      if raw and raw.filename and raw.task_newtask == 2 and raw.sched_process_exec == 3
          and (raw.sched_process_exit or 0) >= 1 then
        local out = { "-DDN_TREE_RAW", "-DDN_TASK_PID_OFF=" .. raw.pid, "-DDN_BPRM_FILENAME_OFF=" .. raw.filename }
        if raw.sched_process_exit == 2 then
          out[#out + 1] = "-DDN_HAVE_GROUP_DEAD"
        end
        return out
      end
      local sys = require("denet.sys")
      local fmt = sys.tracefs() and core.read_file(sys.tracefs() .. "/events/sched/sched_process_exit/format")
      -- 5.16+ says whether the exiting thread was the last of its process
      return fmt and fmt:find("group_dead") and { "-DDN_HAVE_GROUP_DEAD" } or {}
    end,
    variants = {
      { requires = { "ringbuf" }, otherwise = { cflags = { "-DDN_TREE_PERF" },
        note = "process events come through a perf buffer" } },
    },
  },
  ctxsw = { file = "ctxsw.c", order = 20, needs = { "tree", "switch" }, cflags = { "-DDN_HOOK_CTXSW" } },
  syscalls = { file = "syscalls.c", order = 30, needs = { "tree", "insys" }, cflags = { "-DDN_HOOK_SYSCALLS" } },
  insys = {
    file = "insys.c",
    order = 40,
    needs = { "tree" },
    variants = {
      { requires = { "task_storage" }, otherwise = { cflags = { "-DDN_INSYS_HASH" },
        note = "the syscall each thread is in is kept in a hash by thread id" } },
    },
    options = {
      { flag = "-DDN_INSYS_REGS", requires = { "task_pt_regs" },
        note = "the syscall each thread is in is tracked by a program on every syscall" },
    },
  },
  offcpu = {
    file = "offcpu.c",
    order = 50,
    needs = { "tree", "insys", "switch" },
    cflags = function()
      local flags = { "-DDN_HOOK_OFFCPU" }
      -- kernel threads are told apart by task_struct.flags, where this
      -- kernel's BTF puts it
      local btf = features.has("btf") and require("denet.btf")
      local off = btf and btf.offset_of("task_struct", "flags")
      if off then
        flags[#flags + 1] = "-DDN_TASK_FLAGS_OFF=" .. off
      end
      -- on-CPU time is the kernel's own count of each thread's CPU time
      local runtime = btf and btf.offset_of("task_struct", "se.sum_exec_runtime")
      if runtime then
        flags[#flags + 1] = "-DDN_TASK_RUNTIME_OFF=" .. runtime
        if features.has("task_pt_regs") then
          -- (bpf_get_current_task_btf: the field is read with a plain load)
          flags[#flags + 1] = "-DDN_TASK_BTF_LOAD"
        end
      end
      return flags
    end,
    variants = {
      { requires = { "btf" }, otherwise = { note = "kernel threads cannot be told apart: their missing user "
        .. "stacks count as unread" } },
    },
    options = {
      { flag = "-DDN_KSTACK_REUSE", also = { "-DDN_KSTACK_VERIFY" }, requires = { "task_pt_regs", "ringbuf" },
        note = "kernel stacks are walked at every switch (no stack reuse)" },
      { flag = "-DDN_USTACK_REUSE", also = { "-DDN_USTACK_VERIFY" }, requires = { "task_pt_regs", "ringbuf" },
        note = "user stacks are walked at every switch (no stack reuse)" },
      { flag = "-DDN_LEAF_UNWIND", requires = { "task_pt_regs", "ringbuf" },
        note = "callers of functions without frame pointers (libc's) are missing from user stacks" },
    },
  },
  switch = {
    file = "switch.c",
    order = 90,
    needs = { "tree" },
    cflags = function()
      -- 5.18+ passes the raw tracepoint prev_state
      local raw = raw_facts()
      if raw and raw.sched_switch == 4 then
        return { "-DDN_SWITCH_RAW", "-DDN_TASK_PID_OFF=" .. raw.pid }
      end
      return {}
    end,
  },
}

local TEXT_ORDER = 60

local noted = {}
local function note(text)
  if not noted[text] then
    noted[text] = true
    io.stderr:write("denet: ", text, "\n")
  end
end

-- The first feature of list the kernel lacks, or nil.
local function missing(list)
  for _, f in ipairs(list or {}) do
    if not features.has(f) then
      return f
    end
  end
end

local function feature_line(name)
  for _, f in ipairs(features.LIST) do
    if f.name == name then
      local off = features.disabled()[name]
      return string.format("%s %s (%s)", off and "DENET_DISABLE turns off" or "this kernel has no", f.what,
        off and name or (f.since .. "+"))
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
    local p = M.PARTS[n]
    if not p then
      error(string.format("compose: no BPF part named '%s'", tostring(n)), 3)
    end
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
    return M.PARTS[a].order < M.PARTS[b].order
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
    local p = M.PARTS[n]
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
    for _, o in ipairs(M.PARTS[n].options or {}) do
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

--- Build one program. spec.parts: part names; spec.text: { name, text }
--- items of a script's own BPF C (compiled after the parts it uses,
--- before the shared sched_switch probe); spec.cflags: more flags;
--- spec.name: for diagnostics; spec.before_attach(bpf): called once the
--- program is loaded, before its probes are attached. Notes of fallbacks are written once to
--- stderr. Returns the program: .bpf (a denet.bpf object), .parts (the
--- set), :has_flag(f).
function M.build(spec)
  local BPF = require("denet.bpf")
  local flags, notes, list, set = M.plan(spec.parts or {}, spec.cflags)
  for _, n in ipairs(notes) do
    note(n)
  end
  local items = {}
  for _, n in ipairs(list) do
    items[#items + 1] = { order = M.PARTS[n].order, part = M.PARTS[n].file }
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
    before_attach = spec.before_attach }
  return setmetatable({ bpf = bpf, parts = set, flags = flags, flag_set = flag_set, notes = notes }, Program)
end

return M
