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
Failures raise DenetError (a RuntimeError) with denet's one-line message.
"""

import json
import os

from ._session import DenetError, Session, once
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


class ProcessMonitor:
    """Monitor a command (started now, watched from its first instruction)
    or, with from_pid, a running process; its descendants too unless
    include_children=False. offcpu=True and syscalls=True add denet's
    off-CPU and syscall figures to each sample and to the summary;
    plugins=["name:key=value", ...] runs denet plugins on the samples."""

    def __init__(self, cmd, base_interval_ms=100, max_interval_ms=1000, since_process_start=False, output_file=None,
                 output_format="jsonl", store_in_memory=True, quiet=False, include_children=True,
                 write_metadata=False, write_env=False, offcpu=False, syscalls=False, plugins=None, *, pid=None,
                 stdout_file=None, stderr_file=None):
        if pid is None and (not isinstance(cmd, (list, tuple)) or len(cmd) == 0):
            raise DenetError("the command is empty: give a list like ['sleep', '1']")
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
                stdout=stdout_file, stderr=stderr_file)
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
                 write_metadata=False, write_env=False, offcpu=False, syscalls=False, plugins=None):
        """Monitor the running process pid (and its descendants)."""
        return ProcessMonitor(None, base_interval_ms, max_interval_ms, since_process_start, output_file,
                              output_format, store_in_memory, quiet, include_children, write_metadata, write_env,
                              offcpu, syscalls, plugins, pid=pid)

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
        is gone."""
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
        if self._summary is None and not self._session.closed:
            reply = self._session.request("finish")
            for s in reply.get("samples") or []:
                self._took(s)
            self._summary = reply["summary"]
            self.exit_code = reply.get("exit_code")
            if self._out:
                self._out.close()
            self._session.close()

    def is_running(self):
        if not self._running:
            return False
        self._running = self._session.request("running")["running"]
        return self._running

    def get_pid(self):
        return self._pid

    def get_metadata(self):
        """The metadata record (JSON string)."""
        return self._metadata

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


def execute_with_monitoring(cmd, stdout_file=None, stderr_file=None, timeout=None, base_interval_ms=100,
                            max_interval_ms=1000, store_in_memory=True, output_file=None, output_format="jsonl",
                            since_process_start=False, pause_for_attachment=True, quiet=False,
                            include_children=True, write_metadata=False, offcpu=False, syscalls=False,
                            plugins=None):
    """Run cmd to completion under the monitor (attached before its first
    instruction: denet starts it held) and return (exit_code, monitor).
    stdout_file/stderr_file: where its output goes. timeout (seconds): it
    is stopped and TimeoutError raised."""
    mon = ProcessMonitor(cmd, base_interval_ms, max_interval_ms, since_process_start, output_file, output_format,
                         store_in_memory, quiet, include_children, write_metadata, False, offcpu, syscalls,
                         plugins, stdout_file=stdout_file, stderr_file=stderr_file)
    if timeout is None:
        mon.run()
        return mon.exit_code, mon
    import time

    deadline = time.monotonic() + timeout
    while mon._running:
        left = deadline - time.monotonic()
        if left <= 0:
            mon.close()
            raise TimeoutError("Process timed out after %ss" % timeout)
        reply = mon._session.request("step", seconds=min(_STEP, left))
        for s in reply["samples"]:
            mon._took(s)
        if reply["state"] != "running":
            mon._running = False
    mon._finish()
    return mon.exit_code, mon


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
