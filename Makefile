# ranlib: set up, test, build the book, rerun the experiments.
#   make book        environment if missing, re-render notebooks from results/, build book/_build/html
#   make test        environment if missing, then the whole test suite
#   make reproduce PROFILE=smoke|quick|paper [NOTEBOOKS="a b"] [DEVICE=cuda] [DATASET=..] [DATA_ROOT=..]
#   make venv        only the environment (.venv)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Written after a successful install; pip runs again only when the dependency files change.
STAMP := $(VENV)/.ranlib-installed

PROFILE ?= smoke
NOTEBOOKS ?=
DEVICE ?= auto
DATASET ?=
DATA_ROOT ?=
PYTEST_ARGS ?=
# Two pytest workers; tests marked xdist_group("book") share one worker so the book builds once.
PYTEST_WORKERS ?= 2

.PHONY: venv test book reproduce clean-book

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c requirements/constraints.txt -e '.[study,test]'
	touch $@

# pytest exits 5 when it collects no tests (e.g. PYTEST_ARGS="-k nothing"): say so, do not fail.
# One OpenMP thread per process: two pytest workers (and the notebook kernels and subprocesses they
# start) on two cores; more threads oversubscribe the cores and OpenMP's spin-waits slow tests 10x.
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); \
	status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; \
	exit $$status

book: $(STAMP)
	$(PY) tools/reproduce.py --report-only
	$(VENV)/bin/jupyter-book build book/ --path-output book -W -n --keep-going

reproduce: $(STAMP)
	$(PY) tools/reproduce.py --profile $(PROFILE) --device $(DEVICE) \
		$(if $(strip $(NOTEBOOKS)),--notebooks $(NOTEBOOKS)) \
		$(if $(DATASET),--dataset $(DATASET)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

clean-book:
	rm -rf book/_build _build
