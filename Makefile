# Convenience entry points; the build itself is CMake (CMakeLists.txt).
#   make demo    set up the machine, build, and run denet on a demo workload
#   make test    set up the machine, build, and run the whole test suite
#   make test-kernels  the kernel matrix: Debian's 6.1 generic, cloud and rt
#                kernels booted under qemu, each running the smoke suite
#   make asan    the same suite on an ASan+UBSan build
#   make bench   the benchmarks in bench/ (writes bench/results/)
# The set-up step (tools/setup.sh) needs root: it installs Debian packages.

BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

.PHONY: setup build demo test test-kernels asan bench install clean

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

asan: setup
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DDENET_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ctest -LE kernels --output-on-failure

bench: build
	bash bench/run.sh $(BUILD)

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
