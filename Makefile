# reglab — build, test, run. `make demo` and `make test` do all the set-up on a fresh machine
# (a Rust toolchain and python3): libtorch comes from the PyTorch wheel in a venv outside the
# checkout. Point LIBTORCH= at an existing libtorch 2.11 to skip the venv.

TORCH_VERSION := 2.11.0
TORCH_VENV    ?= $(HOME)/.cache/reglab/torch-$(TORCH_VERSION)
PYTHON        ?= python3
EXP           ?= experiments/stablemax_grokking.yaml
RESULTS       ?= results
ARGS          ?=

ifdef LIBTORCH
TORCH_READY :=
export LIBTORCH
else
TORCH_READY := $(TORCH_VENV)/.installed
export LIBTORCH_USE_PYTORCH := 1
# torch-sys asks `python3` where torch is: the venv's must come first.
export PATH := $(TORCH_VENV)/bin:$(PATH)
endif

CARGO   ?= cargo
REGLAB  := target/release/reglab
SPECS   := $(wildcard experiments/*.yaml)

.PHONY: all build demo test test-slurm slurm-packages run sweep tables bench bench-suite clean torch env data browser $(SPECS:%=sweep-%)

all: build

$(TORCH_VENV)/.installed:
	@echo ">> installing torch==$(TORCH_VERSION) into $(TORCH_VENV) (once; about 4 GB)"
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	@touch $@

torch: $(TORCH_READY)

build: $(TORCH_READY)
	$(CARGO) build --release

demo: build
	@start=$$(date +%s); \
	$(REGLAB) run experiments/stablemax_grokking.yaml --out $(RESULTS) --jobs 2 $(ARGS); rc=$$?; \
	echo ">> demo wall time: $$(( $$(date +%s) - start )) s"; \
	echo ">> open $(RESULTS)/stablemax_grokking/report.html (tables, claims, curves); figures in $(RESULTS)/stablemax_grokking/plots/"; exit $$rc

# Tests run two at a time: one torch thread each (OMP_NUM_THREADS sets libtorch's default).
test: $(TORCH_READY)
	OMP_NUM_THREADS=1 $(CARGO) test --release -- --test-threads=2

# `reglab slurm` against real daemons (munged, slurmctld, slurmd on loopback, as root): Debian's
# Slurm packages are installed if missing. Under 5 minutes.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
slurm-packages:
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null || \
	  { echo ">> apt-get install $(SLURM_PACKAGES)"; apt-get update -qq && apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null; }

test-slurm: $(TORCH_READY) slurm-packages
	OMP_NUM_THREADS=1 $(CARGO) test --release --test slurm -- --ignored --nocapture

# Headless Chromium for the test that opens report.html (skipped, with a note, without it).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

run: build
	$(CARGO) run --release -- run $(EXP) --out $(RESULTS) $(ARGS)

# Every spec at once: `make -j2 sweep`.
sweep: $(SPECS:%=sweep-%)
$(SPECS:%=sweep-%): sweep-%: build
	$(REGLAB) -q run $* --out $(RESULTS) --threads 1 $(ARGS) > /dev/null

tables: build
	$(REGLAB) report $(RESULTS)

BENCH_PYTHON ?= $(if $(LIBTORCH),$(PYTHON),$(TORCH_VENV)/bin/python)
BENCH_THREADS ?= 2
# Not a test: reglab against PyTorch eager at the same thread count, written to bench/results.md.
bench: build
	@echo "# reglab vs PyTorch eager ($$(date -u +%Y-%m-%d), \`make bench\`)" > bench/results.md
	@echo >> bench/results.md
	$(BENCH_PYTHON) bench/stablemax_bench.py --reglab $(REGLAB) --threads $(BENCH_THREADS) | tee -a bench/results.md
	@echo >> bench/results.md
	$(BENCH_PYTHON) bench/elr_bench.py --reglab $(REGLAB) --threads $(BENCH_THREADS) | tee -a bench/results.md
	@echo >> bench/results.md
	@test -f $(DATA_DIR)/fashion_mnist/train-images-idx3-ubyte.gz || $(MAKE) data
	$(BENCH_PYTHON) bench/resnet_bench.py --reglab $(REGLAB) --data-dir $(DATA_DIR) --threads $(BENCH_THREADS) | tee -a bench/results.md
	$(BENCH_PYTHON) bench/pieces.py --threads $(BENCH_THREADS)

# The whole CPU suite's wall time as `make -j2 sweep` runs it, per spec, appended to bench/suite.md
# (its own file: `make bench` rewrites results.md); about 45 minutes here.
bench-suite: build
	$(PYTHON) bench/suite.py --reglab $(REGLAB)

# Datasets the package registries carry, verified by checksum into data/ (or DATA_DIR):
# Fashion-MNIST from Debian's dataset-fashion-mnist, MovieLens-100k from the recbole wheel.
# digits ships in the repository; mnist and cifar10 need `reglab data fetch NAME` and internet.
DATA_DIR ?= data
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist
RECBOLE := recbole==1.2.1
data: build
	@if [ ! -f $(FMNIST_DEB_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo ">> apt-get install dataset-fashion-mnist"; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else echo ">> no apt-get here: get Fashion-MNIST with 'reglab data fetch fashion_mnist'"; fi; \
	fi
	@if [ -f $(FMNIST_DEB_DIR)/train-images-idx3-ubyte.gz ]; then \
	  $(REGLAB) --data-dir $(DATA_DIR) data fetch fashion_mnist --from $(FMNIST_DEB_DIR); fi
	@tmp=$$(mktemp -d) && \
	  $(PYTHON) -m pip download --quiet --no-deps --disable-pip-version-check -d $$tmp $(RECBOLE) && \
	  $(PYTHON) -c "import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/recbole-*.whl')[0]); open(sys.argv[1] + '/ml-100k.inter', 'wb').write(z.read('recbole/dataset_example/ml-100k/ml-100k.inter'))" $$tmp && \
	  $(REGLAB) --data-dir $(DATA_DIR) data fetch movielens_100k --from $$tmp; rc=$$?; rm -rf $$tmp; exit $$rc
	$(REGLAB) --data-dir $(DATA_DIR) data list

# The two lines to export so that plain `cargo run -- run ...` works.
env:
	@echo 'export LIBTORCH_USE_PYTORCH=1'
	@echo 'export PATH="$(TORCH_VENV)/bin:$$PATH"'

clean:
	$(CARGO) clean
	rm -rf $(RESULTS)/*/
