"""denet in a Snakemake workflow: each rule's command runs under
`denet run --benchmark-tsv`, beside Snakemake's own `benchmark:` file, and
both files are read with Python's csv module, as users read them."""

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

FIX = os.environ["DENET_FIXTURES"]
DENET = os.environ["DENET_BIN"]
SNAKEMAKE = shutil.which("snakemake")

HEADER = ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time"]

# Two rules whose CPU is in children shorter than Snakemake's 0.5 s poll:
# 40 forked children of 20 ms of CPU each, and 15 processes in turn that
# each fork one of 50 ms.
SNAKEFILE = """
rule all:
    input: "a.done", "b.done"

rule a:
    output: "a.done"
    benchmark: "bench/a.smk.tsv"
    shell: "{denet} run -q --benchmark-tsv bench/a.denet.tsv --stats bench/a.stats -- {fork_burn} 40 20 && touch {{output}}"

rule b:
    output: "b.done"
    benchmark: "bench/b.smk.tsv"
    shell: "{denet} run -q --benchmark-tsv bench/b.denet.tsv --stats bench/b.stats -- sh -c 'for i in $(seq 15); do {fork_burn} 1 50; done' && touch {{output}}"
"""


def read_tsv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed (tools/setup.sh installs it)")
def test_a_two_rule_workflow_writes_denet_s_benchmark_files_beside_snakemake_s():
    work = tempfile.mkdtemp(prefix="denet-smk.")
    with open(os.path.join(work, "Snakefile"), "w") as f:
        f.write(SNAKEFILE.format(denet=DENET, fork_burn=os.path.join(FIX, "fork_burn")))
    r = subprocess.run([SNAKEMAKE, "--cores", "1", "--quiet", "-d", work, "-s", os.path.join(work, "Snakefile")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for rule, want_cpu in (("a", 0.8), ("b", 0.75)):
        smk_header, smk = read_tsv(os.path.join(work, "bench", rule + ".smk.tsv"))
        den_header, den = read_tsv(os.path.join(work, "bench", rule + ".denet.tsv"))
        # the same header, one row each, the same formats
        assert smk_header == den_header == HEADER
        assert len(smk) == len(den) == 1
        smk, den = dict(zip(HEADER, smk[0])), dict(zip(HEADER, den[0]))
        for row in (smk, den):
            assert re.fullmatch(r"\d+\.\d{4}", row["s"])
            assert re.fullmatch(r"\d+:\d\d:\d\d", row["h:m:s"])
            for k in HEADER[2:]:
                assert re.fullmatch(r"\d+\.\d\d", row[k]), (k, row[k])
        # denet's figures are its summary's, in Snakemake's units (MiB, s, %)
        s = json.loads(open(os.path.join(work, "bench", rule + ".stats")).read())
        assert den["s"] == "%.4f" % s["total_time_secs"]
        assert den["max_rss"] == "%.2f" % (s["peak_mem_rss_kb"] / 1024)
        assert den["max_vms"] == "%.2f" % (s["peak_mem_vms_kb"] / 1024)
        assert den["max_uss"] == "%.2f" % (s["peak_mem_uss_kb"] / 1024)
        assert den["max_pss"] == "%.2f" % (s["peak_mem_pss_kb"] / 1024)
        assert den["io_in"] == "%.2f" % (s["total_disk_read_bytes"] / 2 ** 20)
        assert den["io_out"] == "%.2f" % (s["total_disk_write_bytes"] / 2 ** 20)
        assert den["cpu_time"] == "%.2f" % s["cpu_time_secs"]
        assert den["mean_load"] == "%.2f" % (100 * s["cpu_time_secs"] / s["total_time_secs"])
        # the children's CPU is all there (each burns a known amount)...
        assert float(den["cpu_time"]) >= want_cpu * 0.95
        # ...where Snakemake's polling, which also counts denet itself,
        # saw less
        assert float(den["cpu_time"]) >= float(smk["cpu_time"]), (den, smk)
        # Snakemake times the whole command, denet's start included
        assert float(den["s"]) <= float(smk["s"])


def test_denet_stats_writes_the_same_file_from_a_recording():
    work = tempfile.mkdtemp(prefix="denet-smk.")
    out, tsv = (os.path.join(work, n) for n in ("run.jsonl", "live.tsv"))
    # a child that burns 300 ms of CPU, however loaded the machine
    subprocess.run([DENET, "run", "-q", "-o", out, "--benchmark-tsv", tsv, "--",
                    os.path.join(FIX, "fork_burn"), "1", "300"], check=True)
    header, live = read_tsv(tsv)
    assert header == HEADER and len(live) == 1
    live = dict(zip(HEADER, live[0]))
    # the live run's figures count the kernel's own totals at the end
    assert abs(float(live["cpu_time"]) - 0.3) <= 0.03, live
    r = subprocess.run([DENET, "stats", out, "--format", "snakemake"], capture_output=True, text=True, check=True)
    rows = list(csv.reader(r.stdout.splitlines(), delimiter="\t"))
    assert rows[0] == HEADER and len(rows) == 2
    row = dict(zip(HEADER, rows[1]))
    # from the recording: the same figures as `denet stats --json` of it
    s = json.loads(subprocess.run([DENET, "stats", out, "--json"], capture_output=True, text=True,
                                  check=True).stdout)
    assert row["cpu_time"] == "%.2f" % s["cpu_time_secs"]
    assert row["s"] == "%.4f" % s["total_time_secs"]
    assert row["max_rss"] == "%.2f" % (s["peak_mem_rss_kb"] / 1024)
    assert float(row["cpu_time"]) <= float(live["cpu_time"])
    r = subprocess.run([DENET, "stats", out, "--format", "yaml"], capture_output=True, text=True)
    assert r.returncode == 2 and "--format is text, json or snakemake" in r.stderr
