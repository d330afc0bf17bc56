"""The original denet's Python contract, point by point: the exceptions
users catch, string commands, timeouts that end the whole tree,
execute_with_monitoring through ProcessMonitor.from_pid and sample_once,
the original's summary figures, and one monitor used from several
threads."""

import glob
import json
import os
import subprocess
import tempfile
import threading
import time

import pytest

import denet

FIX = os.environ["DENET_FIXTURES"]


def fx(name):
    return os.path.join(FIX, name)


def running(pattern):
    """Processes whose command line matches pattern (pgrep -f)."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="denet-py.")
    os.chmod(d, 0o755)
    return d


def write_lines(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def flat(ts, cpu, rx=0, tx=0, rd=0, wr=0, rss=1000):
    return {"ts_ms": ts, "cpu_usage": cpu, "mem_rss_kb": rss, "mem_vms_kb": 2000, "disk_read_bytes": rd,
            "disk_write_bytes": wr, "net_rx_bytes": rx, "net_tx_bytes": tx, "thread_count": 1, "uptime_secs": 1}


# -- exceptions ----------------------------------------------------------

def test_a_command_not_found_is_a_file_not_found_error():
    for call in (lambda: denet.ProcessMonitor(["no-such-command-xyz"], 100, 1000),
                 lambda: denet.execute_with_monitoring(["no-such-command-xyz", "1"]),
                 lambda: denet.execute_with_monitoring("/no/such/dir/prog --flag")):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert isinstance(e.value, denet.DenetError) and isinstance(e.value, OSError)
        assert e.value.errno == 2 and "cannot execute" in str(e.value)


def test_a_file_that_is_not_executable_is_a_permission_error(tmp):
    path = os.path.join(tmp, "script")
    open(path, "w").write("#!/bin/sh\n")
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        denet.execute_with_monitoring([path])


def test_an_empty_command_is_a_value_error():
    for cmd in ([], "", "   "):
        with pytest.raises(ValueError, match="the command is empty"):
            denet.execute_with_monitoring(cmd)
        with pytest.raises(ValueError):
            denet.ProcessMonitor(cmd, 100, 1000)
    with pytest.raises(ValueError):
        denet.execute_with_monitoring(42)


def test_a_process_that_does_not_exist_is_a_process_lookup_error():
    with pytest.raises(ProcessLookupError, match="no such process: 999999999"):
        denet.ProcessMonitor.from_pid(999999999)


def test_summary_of_a_missing_empty_or_sampleless_file_is_an_os_error(tmp):
    with pytest.raises(FileNotFoundError):
        denet.generate_summary_from_file(os.path.join(tmp, "missing.jsonl"))
    empty = write_lines(os.path.join(tmp, "empty.jsonl"), [])
    none = write_lines(os.path.join(tmp, "none.jsonl"),
                       [{"pid": 1, "cmd": ["x"], "executable": "/x", "t0_ms": 0}, "not json", {"a": 1}])
    for path in (empty, none):
        with pytest.raises(OSError) as e:
            denet.generate_summary_from_file(path)
        assert isinstance(e.value, denet.DenetError) and "holds no samples" in str(e.value)


# -- commands and timeouts -------------------------------------------------

def test_a_string_command_is_split_as_a_shell_splits_it(tmp):
    out = os.path.join(tmp, "out")
    code, mon = denet.execute_with_monitoring("%s 3 'two words'" % fx("exit_with"), stdout_file=out, quiet=True)
    assert code == 3
    assert open(out).read() == "two words\n"
    assert json.loads(mon.get_summary())["exit_code"] == 3


def test_a_timeout_ends_the_command_and_its_children_then_raises_timeout_expired():
    # a command line no other process has
    secs = "30.%06d" % os.getpid()
    script = "%s %s & %s %s; wait" % (fx("sleeper"), secs, fx("sleeper"), secs)
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as e:
        denet.execute_with_monitoring(["sh", "-c", script], timeout=0.8, quiet=True)
    assert e.value.timeout == 0.8 and e.value.cmd == ["sh", "-c", script]
    assert time.monotonic() - t0 < 6
    # both sleepers (the shell's child and its background job) are gone
    assert running(fx("sleeper") + " " + secs) == []


# -- execute_with_monitoring as the original runs it ------------------------

def test_execute_with_monitoring_follows_the_command_with_from_pid_and_sample_once(monkeypatch, tmp):
    calls = {"from_pid": [], "sample_once": 0}
    real_from_pid, real_sample = denet.ProcessMonitor.from_pid, denet.ProcessMonitor.sample_once

    def from_pid(*args, **kw):
        calls["from_pid"].append(kw.get("pid", args[0] if args else None))
        return real_from_pid(*args, **kw)

    def sample_once(self):
        calls["sample_once"] += 1
        return real_sample(self)

    monkeypatch.setattr(denet.ProcessMonitor, "from_pid", staticmethod(from_pid))
    monkeypatch.setattr(denet.ProcessMonitor, "sample_once", sample_once)
    # a child that spins until it has used 0.4 s of CPU
    code, mon = denet.execute_with_monitoring([fx("spin_children"), "1", "0.4", "cpu"], base_interval_ms=50,
                                              quiet=True)
    assert code == 0
    assert calls["from_pid"] == [mon.get_pid()]
    # sampled while it ran (0.4 s at 50 ms), then the call that found it gone
    assert calls["sample_once"] >= 4
    assert len(mon.get_samples()) >= calls["sample_once"] - 1
    # the monitor followed the tree: the child's CPU time is there
    s = json.loads(mon.get_summary())
    assert s["cpu_time_secs"] >= 0.38 and s["exit_code"] == 0


def test_a_failure_while_monitoring_ends_the_command(monkeypatch):
    secs = "31.%06d" % os.getpid()
    real_sample = denet.ProcessMonitor.sample_once
    n = {"calls": 0}

    def failing(self):
        n["calls"] += 1
        if n["calls"] == 2:
            raise RuntimeError("the monitor broke")
        return real_sample(self)

    monkeypatch.setattr(denet.ProcessMonitor, "sample_once", failing)
    with pytest.raises(RuntimeError, match="the monitor broke"):
        denet.execute_with_monitoring([fx("sleeper"), secs], base_interval_ms=50, quiet=True)
    assert running(fx("sleeper") + " " + secs) == []


# -- the original's summary figures -----------------------------------------

def test_avg_cpu_usage_is_the_mean_of_the_samples_and_the_time_weighted_one_is_beside_it(tmp):
    s = json.loads(denet.generate_summary_from_metrics_json([json.dumps(flat(1000, 10.0)),
                                                             json.dumps(flat(2000, 20.0))], 1.0))
    assert s["avg_cpu_usage"] == 15.0
    # uneven samples: 100 % for 0.1 s, then 0 % for 2 s
    recs = [flat(1000, 0.0), flat(1100, 100.0), flat(3100, 0.0)]
    s = json.loads(denet.generate_summary_from_metrics_json(recs, None))
    assert s["avg_cpu_usage"] == pytest.approx(33.33, abs=0.01)
    assert s["avg_cpu_usage_time_weighted"] == pytest.approx(100 * 0.1 / 2.1, abs=0.01)
    # the same from a file, and from denet stats
    path = write_lines(os.path.join(tmp, "uneven.jsonl"), recs)
    assert json.loads(denet.generate_summary_from_file(path))["avg_cpu_usage"] == pytest.approx(33.33, abs=0.01)
    out = subprocess.run([os.environ["DENET_BIN"], "stats", path, "--json"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out)["avg_cpu_usage"] == pytest.approx(33.33, abs=0.01)


def test_a_live_summary_s_avg_cpu_usage_is_the_mean_of_its_samples():
    mon = denet.ProcessMonitor([fx("busy"), "0.6"], 50, 100, quiet=True)
    mon.run()
    cpus = [json.loads(x)["aggregated"]["cpu_usage"] for x in mon.get_samples()
            if json.loads(x).get("kind") == "tree"]
    s = json.loads(mon.get_summary())
    assert s["sample_count"] == len(cpus) >= 4
    assert s["avg_cpu_usage"] == pytest.approx(sum(cpus) / len(cpus), abs=0.01)
    assert "avg_cpu_usage_time_weighted" in s


def test_flat_records_cumulative_counters_give_the_totals():
    recs = [flat(1000, 10, rx=512, tx=256, rd=1024, wr=2048), flat(2000, 20, rx=2048, tx=1024, rd=4096, wr=8192),
            flat(3000, 20, rx=2048, tx=1024, rd=4096, wr=8192)]
    s = json.loads(denet.generate_summary_from_metrics_json(recs, 2.0))
    assert (s["total_sys_net_rx_bytes"], s["total_sys_net_tx_bytes"]) == (2048, 1024)
    assert (s["total_disk_read_bytes"], s["total_disk_write_bytes"]) == (4096, 8192)
    # a tree record's totals stay those of aggregated.sys_net_*
    tree = {"ts_ms": 1000, "aggregated": dict(flat(1000, 5, rx=99), sys_net_rx_bytes=4096, process_count=1)}
    s = json.loads(denet.generate_summary_from_metrics_json([tree], 1.0))
    assert s["total_sys_net_rx_bytes"] == 4096


# -- threads -----------------------------------------------------------------

def test_one_monitor_sampled_from_three_threads_gives_whole_samples():
    mon = denet.ProcessMonitor([fx("sleeper"), "1.5"], 100, 1000, quiet=True)
    got, errors = [], []

    def work():
        try:
            for _ in range(8):
                got.append(mon.sample_once())
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 24
    samples = [json.loads(x) for x in got if x is not None]
    assert len(samples) == 24 and all(x["kind"] == "tree" for x in samples)
    assert len(mon.get_samples()) == 24
    # the run goes on to its end; afterwards every call says it is over
    mon.run()
    assert mon.sample_once() is None


# -- an attached process that exits unreaped ----------------------------------

def wait_zombie(pid, limit=20.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.01)
    raise AssertionError("process %d did not exit" % pid)


def test_an_attached_process_that_exited_unreaped_gives_no_sample():
    # (it exits when told: a line on its stdin)
    proc = subprocess.Popen(["sh", "-c", "read x"], stdin=subprocess.PIPE)
    try:
        mon = denet.ProcessMonitor.from_pid(proc.pid, 50, 500, quiet=True)
        first = json.loads(mon.sample_once())
        assert first["aggregated"]["mem_rss_kb"] > 0
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        # its parent (this test) has not reaped it: a zombie, with no memory
        wait_zombie(proc.pid)
        assert mon.sample_once() is None
        assert mon.is_running() is False
    finally:
        proc.wait()


def test_run_of_an_attached_process_ends_when_it_exits_unreaped_and_other_threads_run_meanwhile():
    proc = subprocess.Popen(["sh", "-c", "read x"], stdin=subprocess.PIPE)
    try:
        mon = denet.ProcessMonitor.from_pid(proc.pid, 50, 500, quiet=True)
        worker = threading.Thread(target=mon.run, daemon=True)
        worker.start()
        ticks, start = 0, time.monotonic()
        while time.monotonic() - start < 0.3:
            ticks += 1
            time.sleep(0.01)
        assert ticks > 3, "run() held the interpreter"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        wait_zombie(proc.pid)
        worker.join(timeout=20)
        assert not worker.is_alive(), "run() went on after the process exited"
        samples = [json.loads(x) for x in mon.get_samples()]
        assert samples and all(x["aggregated"]["mem_rss_kb"] > 0 for x in samples)
    finally:
        proc.wait()


# -- --enable-ebpf -------------------------------------------------------------

def test_enable_ebpf_adds_off_cpu_time_and_syscall_counts():
    # 5 sleeps of 20 ms
    mon = denet.ProcessMonitor([fx("sleep_loop"), "5", "20"], 50, 100, quiet=True, enable_ebpf=True)
    mon.run()
    e = json.loads(mon.get_summary())["ebpf"]
    assert e["offcpu"]["total_time_ns"] >= 5 * 20e6
    top = {t["name"]: t["count"] for t in e["syscalls"]["top_syscalls"]}
    assert top.get("clock_nanosleep", 0) >= 5, top


def test_enable_ebpf_counts_network_bytes_per_process():
    # net_bytes 10 1000: 20000 bytes each way over UDP and TCP, a peek before
    # each UDP receive and 10000 bytes over a Unix socketpair, none counted
    mon = denet.ProcessMonitor([fx("net_bytes"), "10", "1000"], 50, 100, quiet=True, enable_ebpf=True)
    mon.run()
    n = json.loads(mon.get_summary())["ebpf"]["network"]
    assert (n["rx_bytes"], n["tx_bytes"]) == (20000, 20000), n
    assert [(v["rx_bytes"], v["tx_bytes"]) for v in n["per_pid"].values()] == [(20000, 20000)]


def test_enable_ebpf_without_bpf_privileges_still_runs_the_command(tmp):
    marker = os.path.join(tmp, "ran")
    os.chmod(tmp, 0o777)
    readable = os.environ["DENET_READABLE"]
    site = glob.glob(os.path.join(readable, "lib", "python3*", "*-packages"))
    code = ("import denet\n"
            "mon = denet.ProcessMonitor(['sh', '-c', 'echo ran > %s'], 100, 1000, quiet=True, enable_ebpf=True)\n"
            "mon.run()\n" % marker)
    env = dict(os.environ, PYTHONPATH=site[0], DENET_BIN=os.path.join(readable, "bin", "denet"))
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                        code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert open(marker).read() == "ran\n"
    assert "--enable-ebpf: BPF cannot be used here" in r.stderr
