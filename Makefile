# lookalike: the two commands are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STORE  ?= .demo-store
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup demo test bench clean

# Virtual environment: torch==2.13.0 first (a CPU build; any other spec pulls CUDA), then the package
# with every extra the tests cover (Ray and Milvus included: their tests skip where they are absent).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[export,train,text,test,ray,milvus]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lookalike --store $(STORE) ingest examples/demo/products.csv
	$(VENV)/bin/lookalike --store $(STORE) tag predict   # label-free colour and group tags: words like "red dress" read them
	@echo "Open http://$(HOST):$(PORT)/ for the web app, http://$(HOST):$(PORT)/docs for the API  (Ctrl-C to stop)"
	$(VENV)/bin/lookalike --store $(STORE) serve --host $(HOST) --port $(PORT)

test: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy src/lookalike
	$(PY) scripts/check_imports.py
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(STORE) .pytest_cache
