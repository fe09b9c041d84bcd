# Two commands on a fresh machine: `make demo` and `make test`. Set-up is shared, idempotent,
# and skipped when pyproject.toml has not changed since the last install.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	@echo "bn-repro demo: the generated benchmark is not built yet, so for now this trains the six"
	@echo "experiments for 100 paper steps each on data=synthetic (small learnable images made in"
	@echo "memory), on this machine's CPU, through the same trainer a cluster run uses."
	$(BIN)/bn-repro train -m 'experiment=glob(*)' data=synthetic trainer.max_paper_steps=100 \
		trainer.eval_every_paper_steps=25 trainer.log_every_paper_steps=25 \
		'run_dir=runs/demo/$${name}' hydra.sweep.dir=runs/demo
	@echo "Records of each run: runs/demo/<experiment>/ (summary.json, metrics.jsonl, tensorboard/)"

test: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
