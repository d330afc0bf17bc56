#!/usr/bin/python3
"""Drive an interactive program through a pseudo-terminal.

pty_drive.py STEPS_JSON -- CMD ARGS...
STEPS_JSON: a list of {"send": text, "expect": regex, "timeout": s} or
{"send": text, "sleep": s} (wait, expecting nothing);
text may hold \\t (Tab), \\x03 (Ctrl-C), \\x04 (Ctrl-D). Each step sends its
text, then waits until the output since the step began matches expect.
Prints the whole transcript; exits 1 if an expectation was not met (the
step is named on stderr), else with the program's exit status.
"""
import json, os, pty, re, select, sys, time

def main():
    steps = json.loads(sys.argv[1])
    cmd = sys.argv[sys.argv.index("--") + 1:]
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "dumb"
        os.execvp(cmd[0], cmd)
    out = b""

    def read_until(pattern, timeout):
        nonlocal out
        start = len(out)
        deadline = time.time() + timeout
        while True:
            text = out[start:].decode("utf-8", "replace")
            if pattern is None or re.search(pattern, text, re.S):
                return True
            left = deadline - time.time()
            if left <= 0:
                return False
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    return re.search(pattern, out[start:].decode("utf-8", "replace"), re.S) is not None
                if not data:
                    return False
                out += data

    ok = True
    for i, st in enumerate(steps):
        if "send" in st:
            os.write(fd, st["send"].encode())
        if "sleep" in st:
            read_until("(?!)", st["sleep"])
            continue
        if not read_until(st.get("expect"), st.get("timeout", 10)):
            sys.stderr.write("step %d: %r not seen\n" % (i, st.get("expect")))
            ok = False
            break
    # let it finish (a loaded machine, or a sanitizer's exit-time leak
    # check, can take seconds; a program that exits sooner ends this sooner)
    deadline = time.time() + 30
    status = None
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                data = os.read(fd, 65536)
                if data:
                    out += data
            except OSError:
                pass
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            status = os.waitstatus_to_exitcode(st)
            break
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        status = 99
    sys.stdout.write(out.decode("utf-8", "replace"))
    sys.exit(0 if ok and status == 0 else (1 if not ok else status))

main()
