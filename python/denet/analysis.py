"""Helpers over recorded samples, with the original denet's behaviour:
windowed aggregation, peak finding, utilization statistics, format
conversion, loading and saving, and per-process figures of tree samples.

They work on lists of dicts (load_metrics gives one). They read files and
do arithmetic; they measure nothing.
"""

import json
import os
import statistics
import sys
import time

# fields aggregate_metrics combines
_NUMERIC = ("cpu_usage", "mem_rss_kb", "mem_vms_kb", "disk_read_bytes", "disk_write_bytes", "sys_net_rx_bytes",
            "sys_net_tx_bytes", "thread_count", "uptime_secs")

# records that are not samples
_NOT_SAMPLES = ("metadata", "env", "summary", "child", "exit")

_METADATA_KEYS = ("pid", "cmd", "executable", "t0_ms")


def _combine(values, method):
    if method == "max":
        return max(values)
    if method == "min":
        return min(values)
    return sum(values) / len(values)


def aggregate_metrics(metrics, window_size=10, method="mean"):
    """Samples grouped window_size at a time, each group one sample: the
    first of the group with its numeric fields combined (mean, max or min),
    the last one's ts_ms, and _aggregated, _window_size,
    _aggregation_method set."""
    if not metrics:
        return []
    if window_size <= 1:
        return metrics
    out = []
    for start in range(0, len(metrics), window_size):
        group = metrics[start:start + window_size]
        merged = dict(group[0])
        for field in _NUMERIC:
            if field not in group[0]:
                continue
            values = [m[field] for m in group if field in m]
            if values:
                merged[field] = _combine(values, method)
        if "ts_ms" in group[-1]:
            merged["ts_ms"] = group[-1]["ts_ms"]
        merged["_aggregated"] = True
        merged["_window_size"] = len(group)
        merged["_aggregation_method"] = method
        out.append(merged)
    return out


def find_peaks(metrics, field="cpu_usage", threshold=0.8, window_size=5):
    """Samples where field is a local maximum (after a moving average over
    window_size samples) of at least threshold times its largest value.
    [] when a sample lacks the field."""
    if not metrics or any(field not in m for m in metrics):
        return []
    raw = [m[field] for m in metrics]
    floor = max(raw) * threshold
    values = raw
    if window_size > 1:
        half = window_size // 2
        values = []
        for i in range(len(raw)):
            window = raw[max(0, i - half):min(len(raw), i + half + 1)]
            values.append(sum(window) / len(window))
    return [metrics[i] for i in range(1, len(values) - 1)
            if values[i - 1] < values[i] > values[i + 1] and values[i] >= floor]


def _spread(prefix, values, scale=1.0, with_median=True):
    out = {
        "avg_" + prefix: statistics.mean(values) / scale,
        "max_" + prefix: max(values) / scale,
        "min_" + prefix: min(values) / scale,
    }
    if with_median:
        out["median_" + prefix] = statistics.median(values) / scale
        if len(values) > 1:
            out["stdev_" + prefix] = statistics.stdev(values) / scale
    return out


def resource_utilization(metrics):
    """CPU, memory (MB), I/O and network totals (MB, from the last sample),
    threads and the time covered, of samples that all carry the field."""
    if not metrics:
        return {}
    result = {}

    def every(field):
        return all(field in m for m in metrics)

    if every("cpu_usage"):
        result.update(_spread("cpu", [m["cpu_usage"] for m in metrics]))
    if every("mem_rss_kb"):
        result.update(_spread("mem_mb", [m["mem_rss_kb"] for m in metrics], 1024))
    mb = 1024 * 1024
    for field, key in (("disk_read_bytes", "total_read_mb"), ("disk_write_bytes", "total_write_mb"),
                       ("sys_net_rx_bytes", "total_sys_net_rx_mb"), ("sys_net_tx_bytes", "total_sys_net_tx_mb")):
        if every(field):
            result[key] = metrics[-1][field] / mb
    if every("thread_count"):
        result.update(_spread("threads", [m["thread_count"] for m in metrics], with_median=False))
    if "ts_ms" in metrics[0] and "ts_ms" in metrics[-1]:
        result["total_time_sec"] = (metrics[-1]["ts_ms"] - metrics[0]["ts_ms"]) / 1000
    return result


def _read_records(text):
    text = text.strip()
    if not text:
        return []
    if text.startswith("[") and text.endswith("]"):
        return json.loads(text)
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def convert_format(metrics, to_format="csv", indent=None):
    """Samples (a list, or the path of a JSON or JSONL file) as text: json,
    jsonl or csv (common fields first, then the rest sorted)."""
    if isinstance(metrics, (str, os.PathLike)):
        with open(metrics) as f:
            metrics = _read_records(f.read())
    if not metrics:
        return ""
    if to_format == "json":
        return json.dumps(metrics, indent=indent)
    if to_format == "jsonl":
        return "\n".join(json.dumps(m) for m in metrics)
    if to_format == "csv":
        keys = set()
        for m in metrics:
            keys.update(m.keys())
        first = [k for k in ("ts_ms", "cpu_usage", "mem_rss_kb", "mem_vms_kb") if k in keys]
        fields = first + sorted(keys - set(first))
        rows = [",".join(fields)]
        rows += [",".join(str(m.get(k, "")) for k in fields) for m in metrics]
        return "\n".join(rows) + "\n"
    raise ValueError("Unknown format: %s" % (to_format,))


def _is_metadata(rec):
    if rec.get("kind") is not None:
        return rec["kind"] == "metadata"
    return any(k in rec for k in _METADATA_KEYS) and "aggregated" not in rec and "cpu_usage" not in rec


def load_metrics(path, include_metadata=False):
    """The samples of a recorded file (JSONL, tagged or the original's
    untagged lines, or a JSON array). The metadata record is left out
    unless include_metadata (it then comes first); env, summary and other
    records that are not samples are always left out."""
    with open(path) as f:
        records = _read_records(f.read())
    samples, metadata = [], None
    for rec in records:
        if not isinstance(rec, dict):
            continue
        if _is_metadata(rec):
            metadata = metadata or rec
        elif rec.get("kind") in _NOT_SAMPLES:
            continue
        else:
            samples.append(rec)
    if include_metadata and metadata is not None:
        return [metadata] + samples
    return samples


def save_metrics(metrics, path, format="jsonl", include_metadata=True):
    """Write samples: jsonl (with a metadata line naming this Python
    process first, unless include_metadata=False), json or csv."""
    if format not in ("jsonl", "json", "csv"):
        raise ValueError("Unknown format: %s" % (format,))
    with open(path, "w") as f:
        if format == "json":
            json.dump(metrics, f, indent=2)
        elif format == "csv":
            f.write(convert_format(metrics, "csv"))
        else:
            if include_metadata:
                f.write(json.dumps({"pid": os.getpid(), "cmd": ["python"], "executable": sys.executable,
                                    "t0_ms": int(time.time() * 1000)}) + "\n")
            for m in metrics:
                f.write(json.dumps(m) + "\n")


def process_tree_analysis(metrics):
    """Per-process CPU, memory (MB) and thread figures of tree samples
    (main process, each child by pid, and all of them together); {} for
    samples that are not trees."""
    if not metrics or ("children" not in metrics[0] and "child_processes" not in metrics[0]):
        return {}
    series = {}
    main_pid = None

    def note(pid, m):
        s = series.setdefault(pid, {"cpu": [], "memory": [], "threads": []})
        s["cpu"].append(m.get("cpu_usage", 0))
        s["memory"].append(m.get("mem_rss_kb", 0))
        s["threads"].append(m.get("thread_count", 1))

    for sample in metrics:
        main_pid = sample.get("pid", 0)
        parent = sample.get("parent")
        note(main_pid, parent if isinstance(parent, dict) else sample)
        for child in sample.get("children", sample.get("child_processes", [])):
            note(child.get("pid", 0), child.get("metrics", child))

    result = {"main_process": {}, "child_processes": {}, "total": {}}
    everything = {"cpu": [], "memory": [], "threads": []}
    for pid, s in series.items():
        if not s["cpu"]:
            continue
        stats = {
            "avg_cpu": statistics.mean(s["cpu"]),
            "max_cpu": max(s["cpu"]),
            "avg_memory_mb": statistics.mean(s["memory"]) / 1024,
            "max_memory_mb": max(s["memory"]) / 1024,
            "avg_threads": statistics.mean(s["threads"]),
            "max_threads": max(s["threads"]),
        }
        if pid == main_pid:
            result["main_process"] = stats
        else:
            result["child_processes"][pid] = stats
        for k in everything:
            everything[k].extend(s[k])
    if everything["cpu"]:
        result["total"]["avg_cpu"] = statistics.mean(everything["cpu"])
        result["total"]["max_cpu"] = max(everything["cpu"])
    if everything["memory"]:
        result["total"]["avg_memory_mb"] = statistics.mean(everything["memory"]) / 1024
        result["total"]["max_memory_mb"] = max(everything["memory"]) / 1024
    if everything["threads"]:
        result["total"]["avg_threads"] = statistics.mean(everything["threads"])
        result["total"]["max_threads"] = max(everything["threads"])
    return result
