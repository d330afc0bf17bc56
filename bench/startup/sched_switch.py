# bcc's Python front end: compile, load and attach a sched_switch counter,
# read it once, exit. The anchor for denet's start-up benchmark.
from bcc import BPF

b = BPF(text="""
BPF_ARRAY(n, u64, 1);
TRACEPOINT_PROBE(sched, sched_switch) {
  int k = 0;
  u64 *v = n.lookup(&k);
  if (v) __sync_fetch_and_add(v, 1);
  return 0;
}
""")
print(b["n"][0].value >= 0)
