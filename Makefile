# ranlib: set up, test, build the book, rerun the experiments.
#   make book        environment if missing, re-render notebooks from results/, build book/_build/html
#   make test        environment if missing, then the whole test suite
#   make reproduce PROFILE=smoke|quick|paper [NOTEBOOKS="a b"] [DEVICE=cuda] [DATASET=..] [DATA_ROOT=..]
#   make venv        only the environment (.venv)
#   make device-data the CIFAR-10 JPEG copy and its 846 exact test images in .data/ (ignored, < 64 MiB)
#   make device-data-woof  Imagewoof in .data/imagewoof, for a device call of its own (60 MB)
#   make unpack ARCHIVE=path/sitting.tar.gz   a GPU sitting's results into results/, then the book

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
# Two pytest workers, each test module on one worker (--dist loadfile), so that a module-scoped
# fixture such as tests/test_book.py's built book is built once. Not --dist loadgroup: under
# pytest 9.2 pytest-xdist 3.8 can no longer tag node ids with their xdist_group, so it ignores the
# groups and both workers built the book at once (the race that failed CI at stop 26).
PYTEST_WORKERS ?= 2

.PHONY: venv test book reproduce device-data device-data-woof unpack clean-book

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c requirements/constraints.txt -e '.[study,test]'
	touch $@

# pytest exits 5 when it collects no tests (e.g. PYTEST_ARGS="-k nothing"): say so, do not fail.
# One OpenMP thread per process: two pytest workers (and the notebook kernels and subprocesses they
# start) on two cores; more threads oversubscribe the cores and OpenMP's spin-waits slow tests 10x.
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); \
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

# A GPU machine reached through a file-copying tool gets the data as one ignored folder: the JPEG
# copy (53 MiB) and, for ranlib.study.jpeg_gap, only the test part of the exact subset (2.5 MiB of 15).
# Train from ../shared here, not from .data: the decode cache written beside the data is 180 MB.
SHARED_DATA ?= ../shared/data/cifar10-jpeg
device-data: $(STAMP)
	mkdir -p .data/cifar10-jpeg
	cp $(SHARED_DATA)/cifar10-jpeg.npz .data/cifar10-jpeg/
	$(PY) -c "import numpy as np; s = np.load('$(SHARED_DATA)/cifar10-exact-subset.npz'); \
	np.savez('.data/cifar10-jpeg/cifar10-exact-test.npz', **{k: s[k] for k in ('x_test', 'y_test', 'test_index')})"

# Imagewoof (60 MB) fills a device call by itself: carry it without the CIFAR copy (rm -r .data/cifar10-jpeg).
SHARED_WOOF ?= ../shared/data/imagewoof
device-data-woof:
	mkdir -p .data/imagewoof
	cp $(SHARED_WOOF)/imagewoof-112.npz .data/imagewoof/

# What a GPU sitting (python -m ranlib.campaign sitting) packed: results files are added, never
# replaced; then the book is rebuilt, and the tree is ready to commit.
ARCHIVE ?=
unpack: $(STAMP)
	@test -n "$(ARCHIVE)" || { echo "make unpack: give ARCHIVE=path/to/sitting.tar.gz" >&2; exit 2; }
	$(PY) -m ranlib.campaign unpack $(ARCHIVE)
	$(MAKE) book

clean-book:
	rm -rf book/_build _build
