# make train: the default experiment on the embedded data; make test: the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install train test test-fast bench mlflow-ui mlflow-screenshot docs docs-build clean

$(INSTALLED): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# TIDE's reference implementation, which tests/test_errors.py compares with: without its declared
	# dependencies, which would put opencv-python's GUI build over our headless OpenCV (what it imports is here)
	$(PY) -m pip install --quiet --no-deps tidecv==1.0.1 seaborn==0.13.2 appdirs==1.4.4
	touch $@

install: $(INSTALLED)

train: $(INSTALLED)
	$(PY) train.py experiment=ssd_shapes

test: $(INSTALLED)
	$(PY) -m pytest

test-fast: $(INSTALLED)
	$(PY) -m pytest -m "not slow"

bench: $(INSTALLED)
	$(PY) bench/train_step.py
	$(PY) bench/inference.py
	$(PY) bench/eval.py
	$(PY) bench/data.py
	$(PY) bench/loop.py
	$(PY) bench/deploy.py

mlflow-ui: $(INSTALLED)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1

# docs/mlflow_compare.png from the newest sweep in mlflow.db (needs Debian's chromium: apt-get install chromium)
mlflow-screenshot: $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) docs/mlflow_screenshot.py

# the documentation site (mkdocs-material): served at http://127.0.0.1:8000, or built into site/
docs: $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

docs-build: $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(VENV)/bin/mkdocs build

clean:
	rm -rf outputs multirun .pytest_cache site
