# Two commands on a fresh machine: `make demo` and `make test`. Set-up is shared, idempotent,
# and skipped when pyproject.toml has not changed since the last install.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-loader bench-train bench-decoder

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The generated benchmark, in ILSVRC2012's archive formats, then prepared as the real set is.
MINI := data/mini

$(MINI)/archives/ILSVRC2012_devkit_t12.tar.gz: | setup
	$(BIN)/bn-repro make-mini $(MINI)/archives

$(MINI)/prepared/manifest.json: $(MINI)/archives/ILSVRC2012_devkit_t12.tar.gz
	$(BIN)/bn-repro prepare --source $(MINI)/archives --out $(MINI)/prepared

demo: setup $(MINI)/prepared/manifest.json
	@echo "bn-repro demo: the six experiments train for 100 paper steps each on the generated"
	@echo "benchmark ($(MINI)/prepared: 100 classes, 30,000 + 5,000 images), one CPU process each."
	@echo "Not yet the Figure 3 comparison: that needs longer runs, seeds and the report."
	$(BIN)/bn-repro train -m 'experiment=glob(*)' data=mini trainer.max_paper_steps=100 \
		trainer.eval_every_paper_steps=50 trainer.log_every_paper_steps=25 \
		'run_dir=runs/demo/mini/$${name}' hydra.sweep.dir=runs/demo/mini
	@echo "Records of each run: runs/demo/mini/<experiment>/ (summary.json, metrics.jsonl, tensorboard/)"

# Loader images/s on this machine (results/bench/loader-cpu-*.json), from generated images of
# ImageNet's typical size, 500 x 375, and file size: quality 95 gives ~104 KB a JPEG, as the
# ILSVRC2012 train set's 138 GB / 1,281,167 images ~ 108 KB.
BENCH := data/bench

$(BENCH)/prepared/manifest.json: | setup
	$(BIN)/bn-repro make-mini $(BENCH)/archives --classes 10 --train-per-class 120 \
		--val-per-class 2 --size 500 --height 375 --quality 95
	$(BIN)/bn-repro prepare --source $(BENCH)/archives --out $(BENCH)/prepared

bench-loader: $(BENCH)/prepared/manifest.json
	$(BIN)/bn-repro bench loader --root $(BENCH)/prepared --batches 40 --photometric none
	$(BIN)/bn-repro bench loader --root $(BENCH)/prepared --batches 40 --photometric full

# Training images/s per GPU on a GPU machine (results/bench/train-<gpu>-<experiment>-<data>.json):
# every experiment on synthetic images (the model alone) and through the GPU DALI pipeline on the
# ImageNet-sized JPEGs above; then the throughput and Figure 3 cost tables from all records.
# BENCH_ARGS adds arguments, e.g. BENCH_ARGS="--compile default --tag compiled".
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
			--tag hw$$load-$$decode data.dali_hw_decoder_load=$$load data.dali_decode=$$decode \
			|| exit 1; \
	done; done

test: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
