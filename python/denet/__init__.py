"""denet from Python: the original denet's API on denet's one core.

    import denet
    mon = denet.ProcessMonitor(["make", "-j8"], base_interval_ms=100, max_interval_ms=1000)
    mon.run()                                   # until the command exits
    print(mon.get_summary())                    # a JSON string

    code, mon = denet.execute_with_monitoring(["python3", "train.py"], timeout=600)
    report = denet.offcpu(cmd=["./server"], duration=10)   # the built-in's JSON report

Samples, metadata and summaries cross the API as JSON strings, as in the
original; the built-ins' reports as dicts. Every call goes to denet itself
(a `denet session` process, see _session.py): with BPF privileges the
monitor uses BPF, without them /proc, as the command line does.
Failures raise the built-in exceptions the original raises, which are also
DenetError (a RuntimeError) with denet's one-line message: OSError and its
subclasses for files, commands and processes (FileNotFoundError,
PermissionError, ProcessLookupError), ValueError for a bad argument;
a timeout raises subprocess.TimeoutExpired.
"""

import errno
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time

from ._session import DenetError, DenetValueError, Session, error_of, once
from .analysis import (
    aggregate_metrics,
    convert_format,
    find_peaks,
    load_metrics,
    process_tree_analysis,
    resource_utilization,
    save_metrics,
)

__version__ = "0.7.0"

__all__ = [
    "DenetError",
    "DenetValueError",
    "ProcessMonitor",
    "execute_with_monitoring",
    "generate_summary_from_file",
    "generate_summary_from_metrics_json",
    "offcpu",
    "syscalls",
    "aggregate_metrics",
    "convert_format",
    "find_peaks",
    "load_metrics",
    "process_tree_analysis",
    "resource_utilization",
    "save_metrics",
]

_STEP = 0.25  # seconds per step of run(): Ctrl-C is felt within this


class _Writer:
    """Samples to output_file as they come: jsonl line by line; json and
    csv when the monitor is done (or saved)."""

    def __init__(self, path, fmt, metadata):
        if fmt not in ("jsonl", "json", "csv"):
            raise ValueError("output_format must be 'jsonl', 'json' or 'csv', not %r" % (fmt,))
        self.path, self.fmt = path, fmt
        self.rows = []
        self.f = open(path, "w")
        if fmt == "jsonl" and metadata is not None:
            self.f.write(metadata + "\n")
            self.f.flush()

    def add(self, sample):
        if self.fmt == "jsonl":
            self.f.write(sample + "\n")
            self.f.flush()
        else:
            self.rows.append(sample)

    def close(self):
        if self.f is None:
            return
        if self.fmt != "jsonl":
            self.f.write(_format(self.rows, self.fmt))
        self.f.close()
        self.f = None


_CSV_FIELDS = ["ts_ms", "cpu_usage", "mem_rss_kb", "mem_vms_kb", "disk_read_bytes", "disk_write_bytes",
               "sys_net_rx_bytes", "sys_net_tx_bytes", "thread_count", "uptime_secs"]


def _format(samples, fmt):
    """JSON strings of samples as one text: jsonl, a json array or csv
    (the tree's aggregated figures, or a flat sample's)."""
    if fmt in (None, "jsonl"):
        return "".join(s + "\n" for s in samples)
    if fmt == "json":
        return "[" + ",".join(samples) + "]"
    if fmt == "csv":
        lines = [",".join(_CSV_FIELDS)]
        for s in samples:
            d = json.loads(s)
            flat = d.get("aggregated") or d
            if "ts_ms" in d:
                flat = dict(flat, ts_ms=d["ts_ms"])
            lines.append(",".join(str(flat.get(k, "")) for k in _CSV_FIELDS))
        return "\n".join(lines) + "\n"
    raise ValueError("format must be 'jsonl', 'json' or 'csv', not %r" % (fmt,))


def _argv(cmd):
    """The command as a list: a string is split as a shell splits it
    (shlex); an empty one is a ValueError."""
    if isinstance(cmd, (str, bytes, os.PathLike)) and not isinstance(cmd, (list, tuple)):
        cmd = os.fsdecode(cmd)
        argv = shlex.split(cmd)
    elif isinstance(cmd, (list, tuple)):
        argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in cmd]
    else:
        raise DenetValueError("the command must be a list of arguments or a string, not %s" % type(cmd).__name__)
    if not argv:
        raise DenetValueError("the command is empty: give a list like ['sleep', '1']")
    return argv


def _check_command(argv):
    """Raise what running argv would: FileNotFoundError when its program
    is not found (on PATH, or at the path given), PermissionError when it
    is not executable."""
    prog = argv[0]
    if "/" in prog:
        if not os.path.exists(prog):
            raise error_of("cannot execute '%s': no such file" % prog, 2, errno.ENOENT, prog)
        if os.path.isdir(prog) or not os.access(prog, os.X_OK):
            raise error_of("cannot execute '%s': permission denied" % prog, 2, errno.EACCES, prog)
    elif shutil.which(prog) is None:
        raise error_of("cannot execute '%s': command not found" % prog, 2, errno.ENOENT, prog)


def _interval(elapsed, base_ms, max_ms):
    """denet's adaptive interval (s) at elapsed seconds: base for the
    first second, then a linear ramp to max by 10 s."""
    base, top = max(base_ms, 1) / 1000.0, max(max_ms, base_ms, 1) / 1000.0
    if elapsed <= 1:
        return base
    return min(top, base + (top - base) * (elapsed - 1) / 9)


def _stat(pid):
    """(ppid, start time) of pid from /proc/PID/stat, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(pid):
    """The processes below pid (from /proc): {pid: start time}."""
    children = {}
    for name in os.listdir("/proc"):
        st = _stat(int(name)) if name.isdigit() else None
        if st:
            children.setdefault(st[0], []).append((int(name), st[1]))
    out, todo = {}, [pid]
    while todo:
        for c, start in children.get(todo.pop(), []):
            out[c] = start
            todo.append(c)
    return out


def _end_tree(proc, grace=2.0):
    """End process proc (a Popen) and everything below it: SIGTERM, then
    SIGKILL after grace seconds to those still there (the same processes:
    their start times are checked, a pid may be another's by then); reaps
    proc."""
    if proc.poll() is not None:
        return
    tree = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for p in [proc.pid] + list(tree):
            try:
                os.kill(p, sig)
            except OSError:
                pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        if proc.poll() is None:
            tree.update(_descendants(proc.pid))
            proc.kill()
    for p, start in tree.items():
        st = _stat(p)
        if st and st[1] == start:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    proc.wait()


class ProcessMonitor:
    """Monitor a command (started now, watched from its first instruction)
    or, with from_pid, a running process; its descendants too unless
    include_children=False. offcpu=True and syscalls=True add denet's
    off-CPU and syscall figures to each sample and to the summary
    (enable_ebpf=True, the original's keyword: both, where BPF can be used;
    without it the monitor runs on and says so); plugins=["name:key=value",
    ...] runs denet plugins on the samples."""

    def __init__(self, cmd, base_interval_ms=100, max_interval_ms=1000, since_process_start=False, output_file=None,
                 output_format="jsonl", store_in_memory=True, quiet=False, include_children=True,
                 write_metadata=False, write_env=False, offcpu=False, syscalls=False, plugins=None, *, pid=None,
                 stdout_file=None, stderr_file=None, enable_ebpf=False, enable_gpu=False):
        if pid is None:
            cmd = _argv(cmd)
            _check_command(cmd)
        # sample_once() may be called from several threads at once
        self._lock = threading.RLock()
        self._store = store_in_memory
        self._quiet = quiet
        self._samples = []
        self._summary = None
        self._running = True
        self.exit_code = None
        self._session = Session()
        try:
            reply = self._session.request(
                "start", cmd=list(cmd) if pid is None else None, pid=pid,
                base_interval_ms=base_interval_ms, max_interval_ms=max_interval_ms,
                since_process_start=since_process_start, include_children=include_children,
                write_env=write_env, offcpu=offcpu, syscalls=syscalls, plugins=list(plugins or []),
                stdout=stdout_file, stderr=stderr_file, enable_ebpf=enable_ebpf, enable_gpu=enable_gpu)
        except BaseException:
            self._session.close()
            raise
        self._pid = reply["pid"]
        self._metadata = reply["metadata"]
        self._env = reply.get("env")
        self._out = _Writer(output_file, output_format, self._metadata if write_metadata else None) \
            if output_file else None

    @staticmethod
    def from_pid(pid, base_interval_ms=100, max_interval_ms=1000, since_process_start=False, output_file=None,
                 output_format="jsonl", store_in_memory=True, quiet=False, include_children=True,
                 write_metadata=False, write_env=False, offcpu=False, syscalls=False, plugins=None,
                 enable_ebpf=False, enable_gpu=False):
        """Monitor the running process pid (and its descendants)."""
        return ProcessMonitor(None, base_interval_ms, max_interval_ms, since_process_start, output_file,
                              output_format, store_in_memory, quiet, include_children, write_metadata, write_env,
                              offcpu, syscalls, plugins, pid=pid, enable_ebpf=enable_ebpf, enable_gpu=enable_gpu)

    # -- sampling ---------------------------------------------------------

    def _took(self, sample):
        if self._store:
            self._samples.append(sample)
        if self._out:
            self._out.add(sample)
        elif not self._quiet:
            print(sample, flush=True)

    def run(self):
        """Sample on denet's adaptive schedule until the process exits."""
        while self._running:
            reply = self._session.request("step", seconds=_STEP)
            for s in reply["samples"]:
                self._took(s)
            if reply["state"] != "running":
                self._running = False
        self._finish()

    def sample_once(self):
        """Take one sample now: its JSON string, or None once the process
        is gone. Safe from several threads: each call gets a whole sample."""
        with self._lock:
            if not self._running:
                return None
            s = self._session.request("sample")["sample"]
            if s is None:
                self._running = False
                self._finish()
                return None
            self._took(s)
            return s

    def _finish(self):
        with self._lock:
            self._finish_locked()

    def _finish_locked(self):
        if self._summary is None and not self._session.closed:
            reply = self._session.request("finish")
            for s in reply.get("samples") or []:
                self._took(s)
            self._summary = reply["summary"]
            self.exit_code = reply.get("exit_code")
            if self._out:
                self._out.close()
            self._session.close()

    def _set_exit_code(self, code, cpu_secs=None):
        """What the parent of a process watched by pid knows of it
        (execute_with_monitoring): its exit code, and the CPU time its
        rusage counts (itself and the children it reaped, to the end),
        into exit_code and the summary."""
        self.exit_code = code
        if self._summary is not None:
            try:
                s = json.loads(self._summary)
            except ValueError:
                return
            if not isinstance(s, dict):
                return
            if s.get("exit_code") is None:
                s["exit_code"] = code
            if cpu_secs is not None and cpu_secs > (s.get("cpu_time_secs") or 0):
                s["cpu_time_secs"] = round(cpu_secs, 3)
            self._summary = json.dumps(s)

    def is_running(self):
        with self._lock:
            if not self._running:
                return False
            self._running = self._session.request("running")["running"]
            return self._running

    def get_pid(self):
        return self._pid

    def get_metadata(self):
        """The metadata record (JSON string)."""
        return self._metadata

    def _gpu_capability(self):
        try:
            caps = json.loads(self._metadata).get("capabilities") or {}
        except (TypeError, ValueError, AttributeError):
            return {}
        return caps.get("gpu") or {}

    def is_gpu_enabled(self):
        """Are GPUs monitored? (enable_gpu=True, and NVML found a device)"""
        return bool(self._gpu_capability().get("available"))

    def gpu_device_count(self):
        """How many GPUs NVML found (0 without enable_gpu, NVML or a device)."""
        return int(self._gpu_capability().get("device_count") or 0)

    def get_gpu_summary(self):
        """The summary's gpu object (JSON string): devices, peak utilization
        and memory, the tree's GPU memory; None when no GPU was monitored."""
        gpu = None
        try:
            gpu = json.loads(self.get_summary()).get("gpu")
        except (TypeError, ValueError, AttributeError):
            pass
        return json.dumps(gpu) if gpu else None

    def get_env(self):
        """The env record (JSON string), or None unless write_env=True."""
        return self._env

    def get_samples(self):
        """The samples taken so far (JSON strings)."""
        return list(self._samples)

    def clear_samples(self):
        self._samples = []

    def save_samples(self, path, format=None):
        """Write the stored samples: jsonl (default), json or csv."""
        text = _format(self._samples, format or "jsonl")
        with open(path, "w") as f:
            f.write(text)

    def get_summary(self):
        """The summary (JSON string): the run's, once it ended; else one of
        the samples so far."""
        if self._summary is not None:
            return self._summary
        return generate_summary_from_metrics_json(self._samples, None)

    def close(self):
        """Stop now: a command denet started is sent SIGTERM."""
        if self._running and not self._session.closed:
            self._session.abort()
        self._running = False
        if self._out:
            self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _wait4(proc, timeout):
    """Wait up to timeout seconds (None: no limit) for proc (a Popen) to
    end, and reap it with wait4: its rusage (its own CPU and that of the
    children it waited for), or None while it runs. Sets proc.returncode."""
    if proc.returncode is not None:
        return None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return ru
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if fd is not None:
                select.select([fd], [], [], left)
            else:
                time.sleep(0.005 if left is None else min(0.005, left))
    finally:
        if fd is not None:
            os.close(fd)


def _held(argv, stdout, stderr):
    """Start argv stopped before its first instruction (a shell that stops
    itself, then execs it on SIGCONT): the Popen, once it is stopped."""
    proc = subprocess.Popen(["/bin/sh", "-c", 'kill -STOP $$; exec "$@"', "sh"] + argv, stdout=stdout,
                            stderr=stderr)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        # (it ended instead: Popen must not wait for it again)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc


def execute_with_monitoring(cmd, stdout_file=None, stderr_file=None, timeout=None, base_interval_ms=100,
                            max_interval_ms=1000, store_in_memory=True, output_file=None, output_format="jsonl",
                            since_process_start=False, pause_for_attachment=True, quiet=False,
                            include_children=True, write_metadata=False, offcpu=False, syscalls=False,
                            plugins=None, enable_ebpf=False):
    """Run cmd (a list, or a string split as a shell would) to completion
    under the monitor and return (exit_code, monitor), as the original
    does: the command is started (stopped before its first instruction
    with pause_for_attachment, so nothing it does is missed), followed
    with ProcessMonitor.from_pid(...) and sample_once() on denet's adaptive
    schedule. stdout_file/stderr_file: where its output goes. timeout
    (seconds): the command and its children are ended, then
    subprocess.TimeoutExpired is raised. Any failure while it is monitored
    (an interrupt too) ends the command before it goes on."""
    argv = _argv(cmd)
    _check_command(argv)
    files = [open(f, "w") if f else None for f in (stdout_file, stderr_file)]
    proc = mon = None
    try:
        if pause_for_attachment:
            proc = _held(argv, files[0], files[1])
        else:
            proc = subprocess.Popen(argv, stdout=files[0], stderr=files[1])
        t0 = time.monotonic()
        mon = ProcessMonitor.from_pid(pid=proc.pid, base_interval_ms=base_interval_ms,
                                      max_interval_ms=max_interval_ms, since_process_start=since_process_start,
                                      output_file=output_file, output_format=output_format,
                                      store_in_memory=store_in_memory, quiet=quiet,
                                      include_children=include_children, write_metadata=write_metadata,
                                      offcpu=offcpu, syscalls=syscalls, plugins=plugins, enable_ebpf=enable_ebpf)
        if pause_for_attachment and proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)
        ru = None
        while proc.returncode is None:
            elapsed = time.monotonic() - t0
            if timeout is not None and elapsed >= timeout:
                _end_tree(proc)
                raise subprocess.TimeoutExpired(argv, timeout)
            if mon.sample_once() is None:
                # (the monitor lost it: a zombie not reaped yet)
                ru = _wait4(proc, None)
                break
            left = _interval(elapsed, base_interval_ms, max_interval_ms)
            if timeout is not None:
                left = min(left, max(0.0, timeout - (time.monotonic() - t0)))
            ru = _wait4(proc, left)
        # what happened since the last sample, and the summary, with the
        # kernel's own count of the CPU the command and what it reaped used
        mon.sample_once()
        mon._finish()
        mon._set_exit_code(proc.returncode, ru and ru.ru_utime + ru.ru_stime)
        return proc.returncode, mon
    except BaseException:
        if proc is not None:
            _end_tree(proc)
        if mon is not None:
            mon.close()
        raise
    finally:
        for f in files:
            if f:
                f.close()


def generate_summary_from_file(path):
    """The summary (JSON string) of a recorded file: denet's JSONL, the
    original's untagged lines, or a JSON array."""
    return once("summary_file", path=os.fspath(path))["summary"]


def generate_summary_from_metrics_json(samples, elapsed):
    """The summary (JSON string) of samples (JSON strings or dicts);
    elapsed: the run's length in seconds (None: from the samples)."""
    return once("summary_records", records=[s if isinstance(s, str) else json.dumps(s) for s in samples],
                elapsed=elapsed)["summary"]


def _report(op, cmd, pid, duration, options):
    fields = dict(options)
    if cmd is not None:
        fields["cmd"] = list(cmd)
    if pid is not None:
        fields["pid"] = pid
    if duration is not None:
        fields["duration"] = duration
    return once(op, **fields)["report"]


def offcpu(cmd=None, pid=None, duration=None, **options):
    """denet's off-CPU report (a dict, as `denet script offcpu --json`
    gives it) of cmd, run now, or of process pid, or of the whole machine
    for duration seconds. options: min_us, max_us, user_only, kernel_only,
    stack_depth, stack_storage, stack_reuse, plugins."""
    return _report("offcpu", cmd, pid, duration, options)


def syscalls(cmd=None, pid=None, duration=None, **options):
    """denet's syscall report (a dict, as `denet script syscalls --json`
    gives it). options: latency, per_process, per_thread, failed, errno,
    syscalls (names), top, plugins."""
    return _report("syscalls", cmd, pid, duration, options)
