"""Builds the wheel's native part: the denet executable (CMake), with the
Lua library, scripts and BPF sources it runs, into the package as
denet/_denet/{bin,share/denet} (the layout the executable finds its data
in). DENET_BUILD_DIR names a CMake build to take the executable from
instead of building one (the test suite's)."""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithDenet(build_py):
    def run(self):
        super().run()
        build = os.environ.get("DENET_BUILD_DIR")
        if not build:
            build = os.path.join(HERE, "build-wheel")
            subprocess.check_call(["cmake", "-S", HERE, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo"])
            subprocess.check_call(["cmake", "--build", build, "--target", "denet", "-j", str(os.cpu_count() or 1)])
        root = os.path.join(self.build_lib, "denet", "_denet")
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy2(os.path.join(build, "denet"), os.path.join(root, "bin", "denet"))
        for d in ("lib", "scripts", "bpf-src"):
            shutil.copytree(os.path.join(HERE, d), os.path.join(root, "share", "denet", d),
                            ignore=shutil.ignore_patterns("*.o", "__pycache__"))


class PlatformWheel(bdist_wheel):
    """Any Python 3, but this platform: the wheel holds an executable."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(cmdclass={"build_py": BuildWithDenet, "bdist_wheel": PlatformWheel})
