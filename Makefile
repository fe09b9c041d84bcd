# Two commands on a fresh machine: `make demo` and `make test`. Set-up is shared, idempotent,
# and skipped when pyproject.toml has not changed since the last install.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-loader bench-train bench-decoder gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "Setting up $(VENV): torch, DALI, Hydra, ... (a few GB; a minute or two)"
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The generated benchmark, in ILSVRC2012's archive formats, then prepared as the real set is.
MINI := data/mini

$(MINI)/archives/ILSVRC2012_devkit_t12.tar.gz: | setup
	$(BIN)/bn-repro make-mini $(MINI)/archives

$(MINI)/prepared/manifest.json: $(MINI)/archives/ILSVRC2012_devkit_t12.tar.gz
	$(BIN)/bn-repro prepare --source $(MINI)/archives --out $(MINI)/prepared

# make demo: the five variants and the sigmoid control, two seeds each, plus Inception at BN-x5's
# learning rate, each run two gloo ranks (one torchrun, one Hydra sweep), then the report.
DEMO := runs/demo/mini
DEMO_SWEEP := $(BIN)/torchrun --standalone --nproc_per_node=2 --no-python $(BIN)/bn-repro train -m \
	data=mini trainer=mini seed=0,1 'run_dir=$(DEMO)/$${name}/x$${optim.lr_multiplier}/seed$${seed}'

# Figure 4 on the demo's runs (bn-repro evaluate, two ranks): the ReLU BN networks, two seeds
# each (six, as the paper's ensemble), at their best checkpoint with Algorithm 2's statistics
# over 10 batches of 32 per rank, at 1 crop and at GoogLeNet's first 2 scales (72 crops), each
# alone and all together as an ensemble. On this 2-core machine, shared with others' jobs: 2.6 to
# 3.5 minutes (the 72 crops 1.6 to 2.8); all 4 scales (--crops 1,144) take about twice as long,
# Algorithm 2 over trainer=mini's 100 batches 3 minutes more. DEMO_ENSEMBLE: shell globs of run
# directories, to change with the runs the demo trains.
DEMO_ENSEMBLE = $(DEMO)/bn_baseline/x*/seed* $(DEMO)/bn_x5/x*/seed* $(DEMO)/bn_x30/x*/seed*
DEMO_EVALUATE := $(BIN)/torchrun --standalone --nproc_per_node=2 --no-python $(BIN)/bn-repro \
	evaluate --checkpoint best --crops 1,72 --batch 32 --population-batches 10

demo: setup $(MINI)/prepared/manifest.json
	@echo "bn-repro demo: 14 runs of 400 paper steps (6 experiments x 2 seeds, and Inception at"
	@echo "5x its learning rate x 2 seeds), two ranks each, on the generated benchmark"
	@echo "($(MINI)/prepared: 10 classes, 5,000 + 500 images); about a minute a run on 2 cores."
	$(DEMO_SWEEP) 'experiment=glob(*)' hydra.sweep.dir=$(DEMO)/sweeps/variants
	$(DEMO_SWEEP) experiment=inception optim.lr_multiplier=5 hydra.sweep.dir=$(DEMO)/sweeps/inception_x5
	@echo "bn-repro demo: Figure 1, the MNIST network without and with BN (50,000 steps each)"
	$(BIN)/bn-repro figure1 run_dir=$(DEMO)/figure1
	$(DEMO_EVALUATE) $(DEMO_ENSEMBLE)
	$(BIN)/bn-repro report $(DEMO) --out results/mini
	@echo "Results: results/mini/figure3.md, figure2.png, lr_multipliers.md and .png,"
	@echo "input_distributions.png, figure1.md, figure1.png, figure1_landscape.png, figure4.md;"
	@echo "each run's records: $(DEMO)/<experiment>/x<multiplier>/seed<seed>/"

# Loader images/s on this machine (results/bench/loader-cpu-*.json), from generated images of
# ImageNet's typical size, 500 x 375, and file size: quality 95 gives ~104 KB a JPEG, as the
# ILSVRC2012 train set's 138 GB / 1,281,167 images ~ 108 KB. 6,000 of them make epochs of 93
# batches of 64, more than a round's warm-up and timed batches: no epoch end (a loader's
# restart, DALI's padded last batch; rare on ImageNet) falls inside a timed round.
BENCH := data/bench

$(BENCH)/prepared/manifest.json: | setup
	$(BIN)/bn-repro make-mini $(BENCH)/archives --classes 10 --train-per-class 600 \
		--val-per-class 2 --size 500 --height 375 --quality 95
	$(BIN)/bn-repro prepare --source $(BENCH)/archives --out $(BENCH)/prepared

bench-loader: $(BENCH)/prepared/manifest.json
	for photometric in none full; do \
		$(BIN)/bn-repro bench loader --root $(BENCH)/prepared --batches 40 --rounds 5 \
			data.dali_device=cpu data.workers=$$(nproc) data.photometric=$$photometric || exit 1; \
	done

# Training images/s per GPU on a GPU machine (results/bench/train-<gpu>-<experiment>-<data>.json):
# every experiment on synthetic images (the model alone) and through the GPU DALI pipeline on the
# ImageNet-sized JPEGs above; then the throughput and Figure 3 cost tables from all records.
# BENCH_ARGS adds arguments, switches before config overrides, e.g.
# BENCH_ARGS="--tag compiled trainer.compile=default".
EXPERIMENTS := $(sort $(basename $(notdir $(wildcard configs/experiment/*.yaml))))
BENCH_ARGS ?=

bench-train: $(BENCH)/prepared/manifest.json
	for e in $(EXPERIMENTS); do \
		$(BIN)/bn-repro bench train --experiment $$e $(BENCH_ARGS) && \
		$(BIN)/bn-repro bench train --experiment $$e --data dali --root $(BENCH)/prepared \
			$(BENCH_ARGS) || exit 1; \
	done
	$(BIN)/bn-repro bench cost

# DALI's share of JPEGs for the hardware decoder, and decoding the crop or the whole image.
bench-decoder: $(BENCH)/prepared/manifest.json
	for load in 0.5 0.65 0.75 0.9; do for decode in roi full; do \
		$(BIN)/bn-repro bench train --data dali --root $(BENCH)/prepared $(BENCH_ARGS) \
			data.dali_hw_decoder_load=$$load data.dali_decode=$$decode --tag hw$$load-$$decode \
			|| exit 1; \
	done; done

# The suite runs on the CPU with the GPUs hidden; where torch sees a GPU, the gpu tests follow.
test: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	@if $(BIN)/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
		$(BIN)/python -m pytest -m gpu; fi

# A new GPU machine checked and measured in about 8 minutes (one H100/H200, 16 cores): it stops at
# once without a usable GPU, saying why; else makes the data, runs the gpu tests, bench train of
# bn_x5 (synthetic and GPU DALI), bench loader on the GPU and a short CUDA run resumed, and
# prints one table. Records: results/bench/*-<gpu>*.json; logs: runs/gpu-check/<gpu>/.
gpu-check: setup
	$(BIN)/bn-repro bench gpu-check --preflight
	$(MAKE) --no-print-directory $(BENCH)/prepared/manifest.json $(MINI)/prepared/manifest.json
	$(BIN)/bn-repro bench gpu-check --root $(BENCH)/prepared --mini-root $(MINI)/prepared
