# The two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PY) -m uv")
BIN := .venv/bin
PYTEST_ARGS ?=
# The suite starts ~200 Python child processes: each reads cached bytecode (compiled at install,
# and written for src/ and tests/ at the first run) instead of compiling every module again,
# even where the environment says PYTHONDONTWRITEBYTECODE.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest
# Test processes at once (pytest-xdist), on 2 cores: much of the suite waits (child processes
# starting, servers, fsync), not computes. `--dist loadgroup` keeps an `xdist_group` (the browser
# tests' one Chromium) in one worker. TEST_WORKERS=0 runs in this process, in order.
TEST_WORKERS ?= 4
XDIST = -n $(TEST_WORKERS) --dist loadgroup

.PHONY: install run test test-fast test-compiled compiled lint format bench clean

install: .venv/.installed

.venv/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet uv
	$(UV) sync --frozen --all-extras --compile-bytecode
	@touch $@

run: install
	$(BIN)/checkout serve

test: install
	$(PYTEST) $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PYTEST) $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The compiled build (README "Compiled build"): the wheel `pip install .` makes, its hot modules
# compiled by mypyc (hatch_build.py), with gcc profile-guided (built, trained on
# tools/pgo_train.py, built again; SAGAWAY_PGO=0 builds once, without it), unpacked into
# build/compiled/site, out of the dev tree (which stays pure Python), and every test but the
# browser's (crash tests included) run against it (~3 min build, ~1.3 min without the profile,
# + ~5 min of tests).
compiled:
	rm -rf build/compiled
	$(UV) build --wheel --out-dir build/compiled/dist
	$(BIN)/python -m zipfile -e build/compiled/dist/sagaway-*.whl build/compiled/site

test-compiled: install compiled
	SAGAWAY_COMPILED=1 PYTHONPATH=build/compiled/site $(PYTEST) $(XDIST) \
		tests/unit tests/contract tests/integration tests/e2e tests/transport tests/choreography \
		$(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks tools hatch_build.py
	$(BIN)/ruff format --check src tests benchmarks tools hatch_build.py
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Each engine/HTTP measure against its floor, measured in the same run: a table, then one JSON line.
bench: install
	$(BIN)/python benchmarks/floors.py $(BENCH_ARGS)

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache build
