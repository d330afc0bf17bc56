"""The Python package as pip installs it: a wheel built from this checkout
(setuptools and Debian's python3-build, offline, no build isolation) into a
fresh venv, used as root and as an unprivileged user with no DENET_BIN and
no `make install`; the libraries its executable needs are the ones
docs/python.md tells users to install; and `pip install .` of the checkout."""

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

SRC = os.environ["DENET_SOURCE"]
READABLE = os.environ["DENET_READABLE"]
PY = "/usr/bin/python3"


def clean_env(**extra):
    """The environment of a user who only pip-installed denet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENET_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def run(cmd, **kw):
    kw.setdefault("env", clean_env())
    kw.setdefault("cwd", "/")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def wheel():
    out = tempfile.mkdtemp(prefix="denet-wheel.")
    r = run([PY, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, SRC])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    found = glob.glob(os.path.join(out, "denet-*.whl"))
    assert len(found) == 1
    # one platform's wheel: it holds an executable
    assert re.search(r"denet-0\.\d+\.\d+-py3-none-linux_x86_64\.whl$", found[0])
    return found[0]


@pytest.fixture(scope="module")
def venv(wheel):
    d = tempfile.mkdtemp(prefix="denet-venv.")
    os.chmod(d, 0o755)  # nobody uses it too
    v = os.path.join(d, "v")
    r = run([PY, "-m", "venv", v])
    assert r.returncode == 0, r.stderr
    r = run([os.path.join(v, "bin", "pip"), "install", "--no-index", wheel])
    assert r.returncode == 0, r.stderr
    return v


SCRIPT = """
import denet, json, sys
code, mon = denet.execute_with_monitoring([sys.argv[1], "4", "100"], base_interval_ms=50, quiet=True)
s = json.loads(mon.get_summary())
print(json.dumps({"code": code, "cpu": s["cpu_time_secs"], "bin": denet._session.denet_binary(),
                  "module": denet.__file__}))
"""


def use(venv, as_nobody=False):
    cmd = [os.path.join(venv, "bin", "python"), "-c", SCRIPT, os.path.join(READABLE, "fixtures", "fork_burn")]
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    r = run(cmd, env=clean_env(HOME="/tmp"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def test_import_and_the_denet_command_from_the_venv_as_root(venv):
    got, err = use(venv)
    site = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]
    # the package and the executable in it, not the checkout's
    assert got["module"].startswith(site) and got["bin"] == os.path.join(site, "denet", "_denet", "bin", "denet")
    assert got["code"] == 0 and abs(got["cpu"] - 0.4) <= 0.06, got
    assert "polling only" not in err
    # the `denet` command on the venv's PATH
    r = run([os.path.join(venv, "bin", "denet"), "--version"])
    assert r.returncode == 0 and r.stdout.startswith("denet 0.")
    # the executable runs the Lua library and scripts installed beside it:
    # a script put only there is found
    scripts = os.path.join(site, "denet", "_denet", "share", "denet", "scripts")
    with open(os.path.join(scripts, "wheel-probe.lua"), "w") as f:
        f.write('print("from the venv")\nreturn 0\n')
    r = run([os.path.join(venv, "bin", "denet"), "script", "wheel-probe"])
    assert r.returncode == 0 and r.stdout == "from the venv\n", r.stderr


def test_an_unprivileged_user_gets_the_proc_fallback_and_says_so(venv):
    got, err = use(venv, as_nobody=True)
    assert got["code"] == 0 and abs(got["cpu"] - 0.4) <= 0.06, got
    assert "no BPF privileges" in err and "polling only" in err


def needed_packages(exe):
    """The Debian packages of the shared libraries exe links directly."""
    dyn = run(["readelf", "-d", exe]).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", dyn)
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", run(["ldd", exe]).stdout, re.M))
    out = {}
    for soname in needed:
        path = resolved.get(soname)
        assert path and path != "not", "%s: %s is not found" % (exe, soname)
        pkg = None
        for p in (path, os.path.realpath(path), path.replace("/usr/lib/", "/lib/", 1),
                  os.path.realpath(path).replace("/usr/lib/", "/lib/", 1)):
            r = run(["dpkg", "-S", p])
            if r.returncode == 0:
                pkg = r.stdout.split(":")[0]
                break
        out[soname] = pkg
    return out


def documented_packages():
    """The packages docs/python.md says a wheel needs (its `apt install`)."""
    text = open(os.path.join(SRC, "docs", "python.md")).read()
    m = re.search(r"<!-- wheel-runtime -->\s*```[a-z]*\n\s*(?:sudo )?apt install ([^\n`]+)", text)
    assert m, "docs/python.md has no wheel-runtime apt line"
    return set(m.group(1).split())


def test_the_executable_needs_only_the_libraries_the_docs_list(venv):
    site = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]
    exe = os.path.join(site, "denet", "_denet", "bin", "denet")
    docs = documented_packages() | {"libc6"}
    pkgs = needed_packages(exe)
    missing = {so: p for so, p in pkgs.items() if p not in docs}
    assert not missing, "not in docs/python.md: %r" % missing
    # and what it opens at run time: libbcc (to compile), the Lua modules
    assert "libbpfcc" in docs and "lua-cjson" in docs


def test_pip_install_of_the_checkout():
    d = tempfile.mkdtemp(prefix="denet-venv.")
    v = os.path.join(d, "v")
    # (Debian's setuptools and wheel, offline: no build isolation)
    assert run([PY, "-m", "venv", "--system-site-packages", v]).returncode == 0
    r = run([os.path.join(v, "bin", "pip"), "install", "--no-index", "--no-build-isolation", SRC])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = run([os.path.join(v, "bin", "python"), "-c", "import denet; print(denet._session.denet_binary())"])
    assert r.returncode == 0 and r.stdout.strip().startswith(v), r.stdout + r.stderr
    r = run([os.path.join(v, "bin", "denet"), "--version"])
    assert r.returncode == 0 and r.stdout.startswith("denet 0.")
    shutil.rmtree(d)
