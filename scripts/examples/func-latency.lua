-- func-latency: a latency histogram of one function of the target (an
-- uprobe at its entry, an uretprobe at its return), for every process of
-- the target tree that runs it.
--
--   denet script func-latency --func parse_request -- ./server
--   denet run --plugin func-latency:func=parse_request -- ./server
local syscalls = require("denet.syscalls") -- for its log2 histogram printer
local tree_mod = require("denet.tree")

local SRC = [[
BPF_HASH(start, u32, u64, 65536);    /* tid -> entry time */
BPF_ARRAY(hist, u64, 64);            /* log2 buckets of ns */
BPF_ARRAY(totals, u64, 2);           /* [0] calls, [1] ns */

int on_entry(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 pid = id >> 32, tid = id;
	if (!dn_maybe_watched(tid) || !dn_wanted(pid, tid))   /* the target tree (tree.c) */
		return 0;
	u64 now = bpf_ktime_get_ns();
	start.update(&tid, &now);
	return 0;
}

int on_return(struct pt_regs *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	u64 *t0 = start.lookup(&tid);
	if (!t0)
		return 0;
	u64 ns = bpf_ktime_get_ns() - *t0;
	start.delete(&tid);
	hist.increment(bpf_log2l(ns));
	totals.increment(0);
	totals.increment(1, ns);
	return 0;
}
]]

local P = {
  description = "Latency histogram of a user function of the target (uprobe + uretprobe)",
  category = "analysis",
  example = "denet script func-latency --func parse_request -- ./server",
  args = {
    { name = "func", required = true, metavar = "NAME", help = "the function (a symbol of the binary)" },
    { name = "binary", metavar = "PATH", help = "the binary or library holding it (default: the target's program)" },
  },
}

local opts, b, tree
local out = io.stdout

function P.on_init(args)
  opts = args
end

function P.on_start(target)
  local binary = opts.binary or target.executable
  if not binary then
    error("func-latency: no binary to probe (give --binary)", 0)
  end
  tree = tree_mod.for_plugin(target, { name = "func-latency", text = { { name = "func-latency", text = SRC } } })
  b = tree.bpf
  b:attach_uprobe{ name = binary, sym = opts.func, fn_name = "on_entry" }
  b:attach_uretprobe{ name = binary, sym = opts.func, fn_name = "on_return" }
end

local function stats()
  local t = b:get_table("totals")
  local calls, ns = tonumber(t:get(0)), tonumber(t:get(1))
  return calls, ns
end

function P.on_sample()
  if b then
    local calls, ns = stats()
    return { calls = calls, avg_ns = calls > 0 and math.floor(ns / calls) or 0 }
  end
end

function P.on_end()
  if not b then
    return nil
  end
  local calls, ns = stats()
  local h = {}
  for i = 0, 63 do
    h[i + 1] = tonumber(b:get_table("hist"):get(i))
  end
  out:write(string.format("%s: %d calls, average %.0f ns\n", opts.func, calls, calls > 0 and ns / calls or 0))
  out:write(syscalls.histogram(h, ""))
  out:flush()
  tree:close()
  return { calls = calls, avg_ns = calls > 0 and math.floor(ns / calls) or 0 }
end

return P
