# Set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
DATA_DIR ?= $(or $(TANDEM_DATA_DIR),$(HOME)/tensorflow_datasets)
WORKDIR ?= workdirs/demo_barlow_twins
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install install-test tcmalloc fashion-mnist slurm demo test test-slow bench

install: tcmalloc
	$(PIP) install -q -e ".[cpu]"

install-test: tcmalloc
	$(PIP) install -q -e ".[cpu,test]"

# tcmalloc, which the command-line programs re-execute themselves on
# (tandem/host_malloc.py: XLA:CPU's per-step buffers page-fault under glibc's
# malloc). Optional: without it they run on the system allocator, slower.
tcmalloc:
	@if ! ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q libtcmalloc-minimal4 || \
	     (apt-get update -q && apt-get install -y -q libtcmalloc-minimal4)) >/dev/null; \
	  else echo "tcmalloc is not installed (libtcmalloc-minimal4 needs root and apt-get): training runs on the system allocator."; fi; \
	fi

# Fashion-MNIST from the Debian package when we can install it (root), otherwise
# the builder falls back to the standard TFDS download.
fashion-mnist:
	@if [ ! -f $(FMNIST_DEB_DIR)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || \
	   (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	fi
	$(PYTHON) -m tandem.data.prepare --dataset fashion_mnist --data_dir $(DATA_DIR)

demo: install fashion-mnist
	$(PYTHON) -m tandem.ssl.train \
	  --config configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn \
	  --config.data_dir=$(DATA_DIR) --config.evals.linear_probe.baselines=True \
	  --workdir $(WORKDIR)

# SLURM's daemons and client for the tests against a real single-host cluster
# (tests/slurm_cluster.py starts them as plain processes; nothing is configured
# system-wide). Without root the SLURM tests are skipped and say why.
slurm:
	@if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q slurmctld slurmd slurm-client || \
	     (apt-get update -q && apt-get install -y -q slurmctld slurmd slurm-client)) \
	      >/dev/null; \
	  else echo "SLURM is not installed (needs root and apt-get): its tests will be skipped."; fi; \
	fi

# Two workers: compiling dominates the suite, and XLA compiles on one core.
test: install-test slurm
	$(PYTHON) -m pytest -q -n 2 --dist worksteal tests

# The fault-injection trials at full count: 10 kill -9 trials (make test runs 3).
test-slow: install-test
	TANDEM_KILL_TRIALS=10 $(PYTHON) -m pytest -q -s tests/test_faults.py -k kill_9

# This codebase next to PyTorch (bench/peers.py: the same models, loss, optimizer and
# inputs; lightly's losses checked equal to ours first), with the `bench` extra, and
# the evaluators next to scikit-learn (bench/evaluators.py, on prepared
# Fashion-MNIST), and the host input pipeline (bench/input_pipeline.py).
# JSON lines of this run in bench/results/ (emptied first); bench/report.py then
# writes them into BENCHMARKS.md's `make bench` section.
bench:
	$(PIP) install -q -e ".[cpu,bench]"
	$(MAKE) fashion-mnist
	rm -rf bench/results && mkdir -p bench/results
	$(PYTHON) bench/peers.py --json bench/results/peers.jsonl
	$(PYTHON) bench/evaluators.py --data_dir $(DATA_DIR) \
	  --json bench/results/evaluators.jsonl
	$(PYTHON) -m tandem.data.prepare --dataset cifar10_subset --data_dir $(DATA_DIR)
	$(PYTHON) bench/input_pipeline.py --data_dir $(DATA_DIR) \
	  --json bench/results/input_pipeline.jsonl
	$(PYTHON) bench/report.py --results bench/results --out BENCHMARKS.md
