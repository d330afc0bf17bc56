-- denet: compile, load and attach a sched_switch counter, read it once,
-- exit. Prints the compile time on stderr for the benchmark's breakdown.
local BPF = require("denet.bpf")
local core = require("denet.core")

local t0 = core.monotonic()
local b = BPF.new{ text = [[
BPF_ARRAY(n, u64, 1);
TRACEPOINT_PROBE(sched, sched_switch) {
  int k = 0;
  u64 *v = n.lookup(&k);
  if (v) __sync_fetch_and_add(v, 1);
  return 0;
}
]] }
local t1 = core.monotonic()
print(b:get_table("n"):get(0) >= 0)
io.stderr:write(string.format("compile_s=%.4f attach_s=%.4f\n", b.compile_time, t1 - t0 - b.compile_time))
