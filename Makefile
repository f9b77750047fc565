# `make demo` and `make test` create the virtual environment when it is missing, install robot_rl
# into it with the exact versions in constraints.txt, and run. The demo needs only the core
# (MuJoCo included); the tests install every extra they exercise.
#   make test PYTHON=python3.12 VENV=.venv-3.12    another Python, in its own environment
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet -c constraints.txt
export MUJOCO_GL ?= egl

.PHONY: demo test lint bench install clean

# The environment, made by $(PYTHON); one made by another Python is an error, not a silent mix.
$(VENV)/.created:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@want=$$($(PYTHON) -c 'import sys; print(*sys.version_info[:2], sep=".")'); \
	 have=$$($(BIN)/python -c 'import sys; print(*sys.version_info[:2], sep=".")'); \
	 test "$$want" = "$$have" || { echo "make: $(VENV) holds Python $$have, not $$want: make clean, or give VENV=.venv-$$want" >&2; exit 2; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed-core: $(VENV)/.created pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-all: $(VENV)/.installed-core
	$(PIP) -e '.[dev,sim,dist,vision,hardware,ros,ros-wheels,viewer,wandb,formats]'
	# robomimic's own dataset reader checks our HDF5 export; without its dependencies (egl_probe
	# builds from source with cmake; tensorboard, torchvision): the reader needs none of them.
	$(BIN)/python -m pip install --quiet --no-deps robomimic==0.3.0
	touch $@

install: $(VENV)/.installed-all

demo: $(VENV)/.installed-core
	$(BIN)/robot-rl demo

# Style (ruff) and the package's layer contract (import-linter; tests/test_layers.py checks it too).
lint: $(VENV)/.installed-all
	$(BIN)/ruff check robot_rl tests
	$(BIN)/ruff format --check robot_rl tests
	$(BIN)/lint-imports

test: lint
	ROBOT_RL_REQUIRE_RCLPY=1 $(BIN)/python -m pytest -q --durations=15

bench: $(VENV)/.installed-all
	$(BIN)/robot-rl bench loop --load 2 --json benchmarks/results/loop.json
	$(BIN)/robot-rl bench store --json benchmarks/results/store.json
	$(BIN)/robot-rl bench sim --json benchmarks/results/sim.json
	$(BIN)/robot-rl bench policy --json benchmarks/results/policy.json

clean:
	rm -rf $(VENV) .pytest_cache
