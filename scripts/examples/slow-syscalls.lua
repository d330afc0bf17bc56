-- slow-syscalls: every syscall of the target tree slower than a threshold,
-- with the user stack it was made from. A plugin with its own BPF C, built
-- on denet's tracked tree (dn_wanted): the raw_syscalls pair, a start time
-- per thread, and one ring buffer record per slow call (fast calls never
-- reach user space).
--
--   denet script slow-syscalls --threshold-ms 20 -- CMD
--   denet run --plugin slow-syscalls:threshold_ms=20 -- CMD
local frames = require("denet.stacks").frames
local sysnames = require("denet.sysnames")
local tree_mod = require("denet.tree")

local SRC = [[
struct slow {
	u32 pid, tid;
	s64 ret;
	u64 ns;
	s32 nr, ustack;
	char comm[16];
};
BPF_HASH(start, u32, u64, 65536);        /* tid -> entry time */
BPF_STACK_TRACE(stacks, 4096);
BPF_RINGBUF_OUTPUT(events, 16);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 pid = id >> 32, tid = id;
	if (!dn_maybe_watched(tid) || !dn_wanted(pid, tid))   /* the target tree (tree.c) */
		return 0;
	u64 now = bpf_ktime_get_ns();
	start.update(&tid, &now);
	return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	u64 *t0 = start.lookup(&tid);
	if (!t0)
		return 0;
	u64 ns = bpf_ktime_get_ns() - *t0;
	start.delete(&tid);
	if (ns < THRESHOLD_NS)
		return 0;
	struct slow *e = events.ringbuf_reserve(sizeof(struct slow));
	if (!e)
		return 0;
	e->pid = id >> 32;
	e->tid = tid;
	e->ret = args->ret;
	e->ns = ns;
	e->nr = args->id;
	e->ustack = stacks.get_stackid(args, BPF_F_USER_STACK);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	events.ringbuf_submit(e, 0);
	return 0;
}
]]

local P = {
  description = "Every syscall slower than a threshold, with its user stack",
  category = "analysis",
  example = "denet script slow-syscalls --threshold-ms 20 -- ./server",
  args = {
    { name = "threshold_ms", type = "number", default = 10, metavar = "MS", help = "report calls at least this slow" },
    { name = "frames", type = "int", default = 8, metavar = "N", help = "user frames shown per call" },
  },
}

local opts, b, tree, seen = nil, nil, nil, 0
local out = io.stdout

function P.on_init(args)
  opts = args
end

function P.on_start(target)
  tree = tree_mod.for_plugin(target, { name = "slow-syscalls", text = { { name = "slow-syscalls", text = SRC } },
    cflags = { string.format("-DTHRESHOLD_NS=%dULL", math.floor(opts.threshold_ms * 1e6)) } })
  b = tree.bpf
  local stacks = b:get_table("stacks")
  b:get_table("events"):open_ring_buffer(function(e)
    seen = seen + 1
    local name = sysnames.name(e.nr)
    local ret = tonumber(e.ret)
    local res = (ret < 0 and ret >= -4095) and sysnames.errno_name(-ret) or tostring(ret)
    out:write(string.format("%10.3f ms  %s = %s  pid %d tid %d (%s)\n", tonumber(e.ns) / 1e6, name, res, e.pid,
      e.tid, require("ffi").string(e.comm)))
    -- the stack engine names the frames (denet.stacks), leaf first
    local names = frames.user_names(e.pid, stacks:stack_walk(e.ustack), { module = true })
    for i = 1, math.min(#names, opts.frames) do
      out:write("              ", names[i], "\n")
    end
    out:flush()
  end)
end

-- the count so far, in the monitor's JSONL under plugins.slow-syscalls
function P.on_sample()
  return { slow_calls = seen }
end

function P.on_end()
  if b then
    b:ring_buffer_consume()
    tree:close()
  end
  out:write(string.format("slow-syscalls: %d calls of %g ms or more\n", seen, opts.threshold_ms))
  return { slow_calls = seen }
end

return P
