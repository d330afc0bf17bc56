-- cswitch: context switches of the threads of a command (its own process;
-- children are not followed), voluntary (the thread
-- blocked) versus involuntary (it was preempted while runnable).
--
--   denet script cswitch [-d SECONDS] -- CMD [ARGS...]
--
-- An example of the denet API: a held spawn so not one switch is missed,
-- a tracepoint whose arguments come from the running kernel's format, a
-- BPF hash keyed by a struct, and a table printed at the end.
local denet = require("denet")
local BPF = require("denet.bpf")
local ffi = require("ffi")

local S = {
  description = "Voluntary and involuntary context switches per thread of a command",
  category = "cpu",
  example = "denet script cswitch -d 5 -- ./server",
  args = {
    { name = "duration", flag = "-d", type = "number", metavar = "SECONDS", help = "stop the command after this" },
  },
}

function S.main(o)
  local cmd, duration = o.cmd, o.duration
  if #cmd == 0 then
    require("denet.errors").raise("cswitch needs a command: denet script cswitch -- CMD [ARGS...]")
  end

  local p = denet.spawn(cmd)
  local b = BPF.new{ text = [[
struct key_t { u32 tid; char comm[16]; };
struct val_t { u64 voluntary; u64 involuntary; };
BPF_HASH(switches, struct key_t, struct val_t, 10240);

TRACEPOINT_PROBE(sched, sched_switch) {
  if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
    return 0;
  struct key_t k = {};
  k.tid = args->prev_pid;
  bpf_probe_read_kernel(&k.comm, sizeof(k.comm), args->prev_comm);
  struct val_t zero = {}, *v = switches.lookup_or_try_init(&k, &zero);
  if (!v)
    return 0;
  /* TASK_RUNNING (0) at switch-out means it was preempted */
  if (args->prev_state == 0)
    __sync_fetch_and_add(&v->involuntary, 1);
  else
    __sync_fetch_and_add(&v->voluntary, 1);
  return 0;
}
]], cflags = { "-DTARGET=" .. p.pid } }

  local t0 = denet.clock()
  p:resume()
  local code = p:wait_for(duration, nil, { forward = true })
  local elapsed = denet.clock() - t0

  local rows = {}
  for k, v in b:get_table("switches"):items() do
    rows[#rows + 1] = { tid = k.tid, comm = ffi.string(k.comm), vol = tonumber(v.voluntary),
      invol = tonumber(v.involuntary) }
  end
  table.sort(rows, function(x, y)
    return x.vol + x.invol > y.vol + y.invol
  end)
  io.stderr:write(string.format("\n%s exited with %d after %.2f s\n", cmd[1], code, elapsed))
  io.stderr:write(string.format("%-8s %-16s %12s %12s\n", "TID", "COMM", "VOLUNTARY", "INVOLUNTARY"))
  for _, r in ipairs(rows) do
    io.stderr:write(string.format("%-8d %-16s %12d %12d\n", r.tid, r.comm, r.vol, r.invol))
  end
  return code
end

return S
