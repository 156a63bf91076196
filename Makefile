# make train: the default experiment on the embedded data; make test: the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# the whole BCCD dataset (its VOC-layout BCCD/ folder), for the real-data tests and experiment=ssd_bccd: where
# this workplace keeps it, else data/BCCD (make data); the tests and conf/dataset/bccd.yaml read BCCD_ROOT
BCCD_ROOT ?= $(if $(wildcard ../shared/data/BCCD_Dataset/BCCD/JPEGImages),../shared/data/BCCD_Dataset/BCCD,data/BCCD)
export BCCD_ROOT
BCCD_REPOSITORY := https://github.com/Shenggan/BCCD_Dataset
BCCD_COMMIT := d272fb14cdff6e473fafeeeba32aba5f560e9e43

.PHONY: install train test test-fast data bench mlflow-ui mlflow-screenshot docs docs-build clean

$(INSTALLED): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# TIDE's reference implementation, which tests/test_errors.py compares with: without its declared
	# dependencies, which would put opencv-python's GUI build over our headless OpenCV (what it imports is here)
	$(PY) -m pip install --quiet --no-deps tidecv==1.0.1 seaborn==0.13.2 appdirs==1.4.4
	# the corruption benchmark's functions (evaluate.py robustness=true), the authors' code in its maintained
	# fork, likewise without the GUI OpenCV it declares (its other imports are pinned in pyproject.toml)
	$(PY) -m pip install --quiet --no-deps imagecorruptions-imaug==1.1.5
	touch $@

install: $(INSTALLED)

train: $(INSTALLED)
	$(PY) train.py experiment=ssd_shapes

# two worker processes (pytest-xdist): most of a test's time is a subprocess importing torch and Hydra or
# waiting on a server, one core each; `pytest tests/...` alone still runs in one process
test: $(INSTALLED)
	$(PY) -m pytest -n 2

test-fast: $(INSTALLED)
	$(PY) -m pytest -n 2 -m "not slow"

# BCCD at BCCD_ROOT: copied from BCCD_SOURCE=<a BCCD/ folder>, else cloned from its public repository
data:
	@if [ -d "$(BCCD_ROOT)/JPEGImages" ]; then echo "BCCD is at $(BCCD_ROOT)"; \
	elif [ -n "$(BCCD_SOURCE)" ]; then mkdir -p "$(BCCD_ROOT)" && cp -r "$(BCCD_SOURCE)"/. "$(BCCD_ROOT)" && \
		echo "BCCD copied from $(BCCD_SOURCE) to $(BCCD_ROOT)"; \
	else tmp=$$(mktemp -d) && git clone --quiet $(BCCD_REPOSITORY) "$$tmp" && \
		git -C "$$tmp" checkout --quiet $(BCCD_COMMIT) && mkdir -p "$(BCCD_ROOT)" && \
		cp -r "$$tmp"/BCCD/. "$(BCCD_ROOT)" && rm -rf "$$tmp" && echo "BCCD cloned into $(BCCD_ROOT)"; fi

bench: $(INSTALLED)
	$(PY) bench/train_step.py
	$(PY) bench/inference.py
	$(PY) bench/eval.py
	$(PY) bench/data.py
	$(PY) bench/loop.py
	$(PY) bench/deploy.py

mlflow-ui: $(INSTALLED)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1

# outputs/mlflow_compare.png from the newest sweep in mlflow.db (needs Debian's chromium: apt-get install
# chromium); SCREENSHOT=docs/mlflow_compare.png replaces the docs' picture
SCREENSHOT ?= outputs/mlflow_compare.png
mlflow-screenshot: $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[docs]"
	mkdir -p $(dir $(SCREENSHOT))
	$(PY) docs/mlflow_screenshot.py --out $(SCREENSHOT)

# the documentation site (mkdocs-material): served at http://127.0.0.1:8000, or built into site/
docs: $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

docs-build: $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(VENV)/bin/mkdocs build

clean:
	rm -rf outputs multirun .pytest_cache site
