# `make demo` and `make test` create .venv when it is missing, install robot_rl into it, and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,sim,dist,vision,hardware,ros]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/robot-rl demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/robot-rl bench loop --json benchmarks/results/loop.json
	$(BIN)/robot-rl bench store --json benchmarks/results/store.json
	$(BIN)/robot-rl bench sim --json benchmarks/results/sim.json
	$(BIN)/robot-rl bench policy --json benchmarks/results/policy.json

clean:
	rm -rf $(VENV) .pytest_cache
