# bitbench: thin wrapper over CMake. Every target installs missing Debian packages first
# (scripts/install-deps.sh is a no-op when all are present), so a fresh machine needs only
#   make reproduce-table2     # the main job
#   make test                 # the test suite
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
BB := $(BUILD)/bitbench

.PHONY: all deps configure build test test-fast bench fuzz reproduce-table2 reproduce-table2-retrain baselines clean

all: build

deps:
	@scripts/install-deps.sh --quiet

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: $(BUILD)/build.ninja

build: deps configure
	cmake --build $(BUILD) -j $(JOBS)

# The whole suite (Catch2; includes the PyTorch-oracle parity tests and the CLI tests).
test: build
	scripts/run-tests.sh $(BUILD)

# Skips tests tagged [slow].
test-fast: build
	scripts/run-tests.sh $(BUILD) '~[slow]'

bench: build
	scripts/bench.sh $(BUILD)

# Mutation fuzzing of the decoder: 11,000 mutated files of every method (raw and CRC-repaired);
# fails on any crash, hang, non-bitbench exception or peak memory above 4x a valid decode.
fuzz: build
	$(BB) fuzz-bbz --mutants 11000 --json results/fuzz/report.json

# Full-precision baselines of every bundled pretrained model.
baselines: build
	scripts/baselines.sh $(BB)

# Runs that fail leave failure records; the table is still written, and make then fails.
reproduce-table2: build
	@rc=0; $(BB) run experiments/table2.yaml || rc=$$?; $(BB) table results/table2 && exit $$rc

reproduce-table2-retrain: build
	@rc=0; $(BB) run experiments/table2_retrain.yaml || rc=$$?; $(BB) table results/table2_retrain && exit $$rc

clean:
	rm -rf $(BUILD)
