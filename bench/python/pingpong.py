"""pingpong.py N: two Python processes pass a byte back and forth over two
pipes N times (each process a few Python frames deep when it blocks);
prints the seconds it took."""
import os
import sys
import time

N = int(sys.argv[1])
a_r, a_w = os.pipe()
b_r, b_w = os.pipe()


def wait_for(fd):
    return os.read(fd, 1)


def step(inp, out):
    os.write(out, b"x")
    wait_for(inp)


def serve(inp, out, n):
    for _ in range(n):
        wait_for(inp)
        os.write(out, b"x")


pid = os.fork()
if pid == 0:
    serve(a_r, b_w, N)
    os._exit(0)
t0 = time.monotonic()
for _ in range(N):
    step(b_r, a_w)
print("%.6f" % (time.monotonic() - t0))
os.waitpid(pid, 0)
