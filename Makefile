# Two commands on a fresh machine: `make demo` and `make test`. Set-up is shared, idempotent,
# and skipped when pyproject.toml has not changed since the last install.
VENV := .venv
BIN := $(VENV)/bin
EXPERIMENTS := inception bn_baseline bn_x5 bn_x30 bn_x5_sigmoid inception_sigmoid

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	@echo "bn-repro demo: the generated benchmark and the trainer are not built yet, so for now"
	@echo "this builds the paper's six networks from their configs and describes each one."
	@for experiment in $(EXPERIMENTS); do \
		echo; $(BIN)/bn-repro describe experiment=$$experiment || exit 1; \
	done

test: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
