# Convenience entry points; the build itself is CMake (CMakeLists.txt).
#   make demo    set up the machine, build, and run denet on a demo workload
#   make test    set up the machine, build, and run the whole test suite
#   make test-kernels  the kernel matrix: Debian's 6.1 generic, cloud and rt
#                kernels booted under qemu, each running the smoke suite
#   make asan    the same suite on an ASan+UBSan build
#   make fuzz    the libFuzzer targets of tests/fuzz, FUZZ_SECONDS (60) each
#   make test-load  the whole suite (as make test) while stress-ng keeps both CPUs busy
#   make test-private  the suite from a clone in a 0700 folder (as mktemp -d makes)
#   make bench   the benchmarks in bench/ (writes bench/results/)
#   make wheel   the Python package with denet inside, for pip (dist/denet-*.whl)
# The set-up step (tools/setup.sh) needs root: it installs Debian packages.

BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
JOBS ?= $(shell nproc)

.PHONY: setup build demo test test-kernels test-load test-private asan fuzz bench install wheel clean

setup:
	bash tools/setup.sh

build: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/denet run -- sh scripts/examples/demo-workload.sh

test: build
	cd $(BUILD) && ctest -LE kernels --output-on-failure

test-kernels: build
	bash tools/setup.sh kernels
	cd $(BUILD) && ctest -L kernels --output-on-failure

test-load: build
	bash tools/under-load.sh sh -c 'cd $(BUILD) && ctest -LE kernels --output-on-failure'

test-private: setup
	bash tools/private-clone.sh

asan: setup
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DDENET_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ctest -LE kernels --output-on-failure

fuzz: setup
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DDENET_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_targets
	bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

bench: build
	bash bench/run.sh $(BUILD)

install: build
	cmake --install $(BUILD)

wheel: build
	DENET_BUILD_DIR=$(abspath $(BUILD)) /usr/bin/python3 -m build --wheel --no-isolation --outdir dist .

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
