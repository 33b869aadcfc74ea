# All set-up happens here: the first `make demo` or `make test` creates .venv and installs the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA ?= $(or $(PAPERZOO_DATA),data)

.PHONY: setup demo test test-slow test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# real protein chains for the CASP sample builder: only its data files are read, so no dependencies
	$(PY) -m pip install --quiet --no-deps "MDAnalysisTests>=2.7"
	touch $(STAMP)

## main job: build the MNIST sample (real digits in the official IDX format), train the classifier on it
demo: $(STAMP)
	$(PY) -m datamodules.samples mnist --root $(DATA)
	PAPERZOO_DATA=$(DATA) $(VENV)/bin/lightning fit --config configs/classifier_mnist.yaml
	PAPERZOO_DATA=$(DATA) $(VENV)/bin/lightning test --config configs/classifier_mnist.yaml --ckpt_path last

## fast suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs lightning_logs .pytest_cache
