# What psrecord-style monitors do: every interval, read each process of a
# tree through psutil (CPU times, memory, I/O, threads, fds, context
# switches). Samples N times at 10 per second; prints a line per sample.
import sys
import time

import psutil

root = psutil.Process(int(sys.argv[1]))
n = int(sys.argv[2])
interval = 0.1
procs = [root] + root.children(recursive=True)
next_t = time.monotonic()
for _ in range(n):
    procs = [root] + root.children(recursive=True)
    for p in procs:
        try:
            with p.oneshot():
                p.cpu_times()
                p.memory_info()
                p.io_counters()
                p.num_threads()
                p.num_fds()
                p.num_ctx_switches()
        except psutil.Error:
            pass
    print("sample", flush=True)
    next_t += interval
    time.sleep(max(0, next_t - time.monotonic()))
