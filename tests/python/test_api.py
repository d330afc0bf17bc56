"""The Python binding on real processes: each function and method, with
numbers from fixtures of known behaviour; the analysis helpers on denet's
own files; the path without BPF privileges; interrupting Python mid-run."""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import denet

FIX = os.environ["DENET_FIXTURES"]
HERE = os.path.dirname(os.path.abspath(__file__))


def fx(name):
    return os.path.join(FIX, name)


def within(x, want, frac):
    return abs(x - want) <= want * frac


def kinds(samples):
    return [json.loads(s).get("kind") for s in samples]


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="denet-py.")
    os.chmod(d, 0o755)
    return d


def test_process_monitor_runs_a_command_and_counts_its_cpu():
    # four children, one after another, each burning 100 ms of CPU
    mon = denet.ProcessMonitor([fx("fork_burn"), "4", "100"], 50, 200, quiet=True)
    assert mon.get_pid() > 0
    meta = json.loads(mon.get_metadata())
    assert meta["executable"] == fx("fork_burn")
    assert meta["cmd"] == [fx("fork_burn"), "4", "100"]
    mon.run()
    assert not mon.is_running()
    assert mon.exit_code == 0
    samples = mon.get_samples()
    assert len(samples) >= 3
    assert set(kinds(samples)) == {"tree"}
    summary = json.loads(mon.get_summary())
    assert summary["sample_count"] == len(samples)
    assert within(summary["cpu_time_secs"], 0.4, 0.15), summary
    assert summary["processes_started"] == 4
    assert summary["exit_code"] == 0


def test_samples_taken_while_the_caller_is_busy_are_given_too():
    # the schedule samples while Python does something else: run() and
    # the summary still agree on every sample
    mon = denet.ProcessMonitor([fx("sleeper"), "0.8"], 50, 50, quiet=True)
    time.sleep(0.4)
    run_ms = time.time() * 1000
    mon.run()
    samples = mon.get_samples()
    summary = json.loads(mon.get_summary())
    assert summary["sample_count"] == len(samples) >= 10
    stamps = [json.loads(s)["ts_ms"] for s in samples]
    # (the first ones were taken before run() was called)
    assert stamps == sorted(stamps) and stamps[0] < run_ms


def test_sample_once_is_one_real_sample_then_none():
    mon = denet.ProcessMonitor([fx("sleeper"), "1.5"], 100, 1000, quiet=True)
    first = json.loads(mon.sample_once())
    time.sleep(0.05)
    second = json.loads(mon.sample_once())
    assert first["kind"] == "tree" and second["ts_ms"] > first["ts_ms"]
    assert second["aggregated"]["process_count"] == 1
    assert len(mon.get_samples()) == 2
    deadline = time.monotonic() + 10
    while mon.sample_once() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert mon.sample_once() is None
    assert not mon.is_running()
    assert json.loads(mon.get_summary())["exit_code"] == 0


def test_from_pid_attaches_to_a_running_process():
    p = subprocess.Popen([fx("sleeper"), "30"])
    try:
        mon = denet.ProcessMonitor.from_pid(p.pid, base_interval_ms=50, max_interval_ms=100, quiet=True)
        assert mon.get_pid() == p.pid
        assert mon.is_running()
        s = json.loads(mon.sample_once())
        assert s["parent"]["thread_count"] == 1
        p.kill()
        p.wait()
        deadline = time.monotonic() + 5
        while mon.is_running():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        mon.close()
    finally:
        if p.poll() is None:
            p.kill()


def test_errors_are_denet_s_one_line_messages():
    with pytest.raises(denet.DenetError, match="the command is empty"):
        denet.ProcessMonitor([], 100, 1000)
    with pytest.raises(denet.DenetError, match="no such process: 999999999"):
        denet.ProcessMonitor.from_pid(999999999)
    with pytest.raises(denet.DenetError, match="cannot execute 'no-such-command-xyz'"):
        denet.ProcessMonitor(["no-such-command-xyz"], 100, 1000)


def test_env_metadata_and_saving_samples(tmp):
    mon = denet.ProcessMonitor([fx("spin_children"), "1", "0.3"], 50, 100, quiet=True, write_env=True)
    env = json.loads(mon.get_env())
    assert env["kind"] == "env"
    assert isinstance(env["numa"], dict) and env["numa"]["nodes"] >= 1
    assert isinstance(env["lscpu"]["sockets"], int)
    mon.run()
    n = len(mon.get_samples())
    for fmt in ("jsonl", "json", "csv"):
        path = os.path.join(tmp, "s." + fmt)
        mon.save_samples(path, fmt)
        text = open(path).read()
        if fmt == "jsonl":
            assert len(text.strip().split("\n")) == n
        elif fmt == "json":
            assert len(json.loads(text)) == n
        else:
            lines = text.strip().split("\n")
            assert lines[0].startswith("ts_ms,cpu_usage,mem_rss_kb")
            assert len(lines) == n + 1
    mon.clear_samples()
    assert mon.get_samples() == []


def test_output_file_with_metadata(tmp):
    out = os.path.join(tmp, "o.jsonl")
    mon = denet.ProcessMonitor([fx("sleeper"), "0.3"], 50, 100, output_file=out, write_metadata=True,
                               store_in_memory=False)
    mon.run()
    assert mon.get_samples() == []
    lines = [json.loads(x) for x in open(out)]
    assert lines[0]["kind"] == "metadata"
    assert all(r["kind"] == "tree" for r in lines[1:]) and len(lines) >= 3


def test_execute_with_monitoring_redirects_and_returns_the_exit_code(tmp):
    so, se = os.path.join(tmp, "out"), os.path.join(tmp, "err")
    code, mon = denet.execute_with_monitoring([fx("exit_with"), "5", "hello"], stdout_file=so, stderr_file=se,
                                              quiet=True)
    assert code == 5
    assert open(so).read() == "hello\n"
    assert json.loads(mon.get_summary())["exit_code"] == 5


def test_execute_with_monitoring_timeout_stops_the_command():
    # a command line no other process has: this test looks for its own
    # command only
    secs = "30.%06d" % os.getpid()
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        denet.execute_with_monitoring([fx("sleeper"), secs], timeout=0.8, quiet=True)
    assert time.monotonic() - t0 < 6
    out = subprocess.run(["pgrep", "-f", fx("sleeper") + " " + secs], capture_output=True, text=True).stdout
    assert out.strip() == ""


def test_summaries_from_files_and_samples(tmp):
    out = os.path.join(tmp, "run.jsonl")
    subprocess.run([os.environ["DENET_BIN"], "run", "-q", "-o", out, "--", fx("spin_children"), "2", "0.3"],
                   check=True)
    s = json.loads(denet.generate_summary_from_file(out))
    assert s["max_processes"] == 3
    samples = [line for line in open(out) if '"kind":"tree"' in line]
    s2 = json.loads(denet.generate_summary_from_metrics_json(samples, 1.5))
    assert s2["sample_count"] == len(samples) and s2["total_time_secs"] == 1.5
    # the original's untagged lines: metadata, then flat samples
    legacy = os.path.join(tmp, "legacy.jsonl")
    with open(legacy, "w") as f:
        f.write(json.dumps({"pid": 1, "cmd": ["x"], "executable": "/x", "t0_ms": 1000}) + "\n")
        for i in range(4):
            f.write(json.dumps({"ts_ms": 1000 + 500 * (i + 1), "cpu_usage": 50.0, "mem_rss_kb": 100 * (i + 1),
                                "mem_vms_kb": 1, "disk_read_bytes": 0, "disk_write_bytes": 0,
                                "sys_net_rx_bytes": 0, "sys_net_tx_bytes": 0, "thread_count": 2,
                                "uptime_secs": i, "cpu_core": 0}) + "\n")
    s3 = json.loads(denet.generate_summary_from_file(legacy))
    assert s3["sample_count"] == 4 and s3["peak_mem_rss_kb"] == 400 and s3["avg_cpu_usage"] == 50
    empty = os.path.join(tmp, "empty.jsonl")
    open(empty, "w").write(json.dumps({"pid": 1, "cmd": [], "executable": "", "t0_ms": 0}) + "\n")
    with pytest.raises(denet.DenetError, match="holds no samples"):
        denet.generate_summary_from_file(empty)


def test_analysis_helpers_on_denet_s_own_file(tmp):
    out = os.path.join(tmp, "run.jsonl")
    subprocess.run([os.environ["DENET_BIN"], "run", "-q", "--write-env", "-i", "50", "-m", "50", "-o", out, "--",
                    fx("spin_children"), "2", "0.5"], check=True)
    metrics = denet.load_metrics(out)
    # the usual pattern of the original's users works: every one is a sample
    aggs = [d["aggregated"] for d in metrics]
    assert len(aggs) >= 5
    with_meta = denet.load_metrics(out, include_metadata=True)
    assert with_meta[0]["kind"] == "metadata" and len(with_meta) == len(metrics) + 1
    peaks = denet.find_peaks(aggs, "cpu_usage", threshold=0.5, window_size=1)
    assert all(p["cpu_usage"] >= 0.5 * max(a["cpu_usage"] for a in aggs) for p in peaks)
    util = denet.resource_utilization(aggs)
    assert util["max_threads"] == 3 and util["max_cpu"] > 100
    assert within(util["total_time_sec"], 0.45, 0.5)
    windows = denet.aggregate_metrics(aggs, window_size=2, method="max")
    assert len(windows) == (len(aggs) + 1) // 2 and windows[0]["_aggregated"]
    csv = denet.convert_format(aggs, "csv").split("\n")
    assert csv[0].startswith("ts_ms,cpu_usage,mem_rss_kb,mem_vms_kb")
    tree = denet.process_tree_analysis(metrics)
    assert len(tree["child_processes"]) == 2
    assert all(c["max_cpu"] > 50 for c in tree["child_processes"].values())
    saved = os.path.join(tmp, "saved.jsonl")
    denet.save_metrics(aggs, saved)
    assert len(denet.load_metrics(saved)) == len(aggs)


def test_offcpu_and_syscalls_reports():
    r = denet.offcpu(cmd=[fx("sleep_loop"), "5", "40"])
    t = [x for x in r["threads"] if x["comm"] == "sleep_loop"][0]
    assert within(t["by_category"]["sleep"], 200000, 0.1)
    s = denet.syscalls(cmd=[fx("syscall_mix")], top=50)
    counts = {x["name"]: x["count"] for x in s["syscalls"]}
    assert counts["getppid"] == 102500 and counts["write"] == 5000


def test_monitor_with_offcpu_syscalls_and_a_plugin():
    mon = denet.ProcessMonitor([fx("syscall_mix")], 50, 100, quiet=True, offcpu=True, syscalls=True,
                               plugins=["mem-growth:limit_mib_s=1000"])
    mon.run()
    samples = [json.loads(s) for s in mon.get_samples()]
    assert all("ebpf" in s["aggregated"] for s in samples)
    assert all("mem-growth" in s["plugins"] for s in samples)
    summary = json.loads(mon.get_summary())
    top = {x["name"]: x["count"] for x in summary["ebpf"]["syscalls"]["top_syscalls"]}
    assert top["getppid"] == 102500
    assert summary["ebpf"]["offcpu"]["total_events"] >= 1


# Tests that drop privileges use the install every user can read (the
# checkout may sit in a 0700 folder): its package, its denet, its fixtures.
READABLE = os.environ.get("DENET_READABLE")


def readable_fx(name):
    return os.path.join(READABLE, "fixtures", name)


def _run_python(code, as_nobody=False, **kw):
    path = os.path.dirname(denet.__path__[0])
    if as_nobody:
        path = glob.glob(os.path.join(READABLE, "lib", "python3*", "*-packages"))[0]
    env = dict(os.environ, PYTHONPATH=path)
    if as_nobody:
        # the install's denet: the checkout may not be readable by nobody
        env["DENET_BIN"] = os.path.join(READABLE, "bin", "denet")
    cmd = [sys.executable, "-c", code]
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_without_bpf_privileges_the_monitor_runs_on_proc():
    p = _run_python(
        "import denet, json\n"
        "mon = denet.ProcessMonitor([%r, '4', '100'], 50, 100, quiet=True)\n"
        "mon.run()\n"
        "s = json.loads(mon.get_summary())\n"
        "print(s['cpu_time_secs'], len(mon.get_samples()))\n" % readable_fx("fork_burn"), as_nobody=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "no BPF privileges" in err and "polling only" in err
    cpu, n = out.split()
    # the children's CPU reaches their parent through the kernel's accounting
    assert within(float(cpu), 0.4, 0.15)
    assert int(n) >= 3


def _children(parent):
    """Pids of the processes whose parent is `parent`."""
    out = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % d) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    out.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _programs_held(pids):
    """BPF programs held by these processes, from their descriptors (other
    tests running beside this one load programs too)."""
    n = 0
    for pid in pids:
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:bpf-prog":
                    n += 1
        except OSError:
            pass
    return n


def _gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_interrupting_python_mid_run_cleans_up():
    p = _run_python(
        "import denet, sys\n"
        "mon = denet.ProcessMonitor([%r, '30'], 100, 1000, quiet=True)\n"
        "try:\n"
        "    print(mon.get_pid(), flush=True)\n"
        "    mon.run()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n" % fx("sleeper"))
    pid = int(p.stdout.readline())
    session = _children(p.pid)
    assert _programs_held(session) >= 3  # the session's monitor is running
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "interrupted" in out
    # the command is gone, and so are the session and its programs
    assert _gone(pid)
    assert session and all(_gone(s) for s in session)


def test_gpu_through_nvml_and_without_it(monkeypatch):
    # a stand-in NVML with two devices; the tree's "sleep" holds 512 MiB on device 0
    monkeypatch.setenv("DENET_NVML_LIB", fx("libnvidia-ml-fake.so"))
    monkeypatch.setenv("FAKE_NVML_COMM", "sleep")
    mon = denet.ProcessMonitor(["sleep", "0.3"], 50, 100, quiet=True, enable_gpu=True)
    mon.run()
    assert mon.is_gpu_enabled()
    assert mon.gpu_device_count() == 2
    gpu = json.loads(mon.get_gpu_summary())
    assert gpu["device_count"] == 2
    assert gpu["total_memory_gb"] == 24
    assert gpu["process_memory_usage_gb"] == 0.5
    assert gpu["max_process_gpu_utilization"] == 33
    sample = json.loads(mon.get_samples()[0])["aggregated"]["gpu"]
    assert sample["process_data"][0]["pid"] == mon.get_pid()
    # not asked for: none
    plain = denet.ProcessMonitor(["true"], 50, 100, quiet=True)
    plain.run()
    assert not plain.is_gpu_enabled()
    assert plain.gpu_device_count() == 0
    assert plain.get_gpu_summary() is None
    # asked for, no NVML: the run goes on
    monkeypatch.setenv("DENET_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
    none = denet.ProcessMonitor(["true"], 50, 100, quiet=True, enable_gpu=True)
    none.run()
    assert none.exit_code == 0
    assert not none.is_gpu_enabled()
    assert none.get_gpu_summary() is None
