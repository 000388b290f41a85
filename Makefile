PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every dependency (the test tools and the build backend too) pinned with its hashes: `make lock`
# writes it from pyproject.toml; `make run` and `make test` install exactly that.
LOCK := requirements.lock
LOCK_TOOLS := .venv-tools
UV_VERSION := 0.13.9

.PHONY: run test bench locales lock clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/katilim run --or-chat

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

# Re-extract message keys and update / compile the tr, en, ar catalogs.
locales: $(STAMP)
	$(BIN)/python -m bot.i18n_tools update
	$(BIN)/python -m bot.i18n_tools compile

# Resolve pyproject.toml's dependencies, its test extra and its build backend to the newest
# versions its ranges allow, for every platform and Python >= 3.11, with the hashes of every file.
# After changing a dependency in pyproject.toml: make lock, then commit both files.
lock:
	test -x $(LOCK_TOOLS)/bin/uv || ($(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install --quiet uv==$(UV_VERSION))
	$(PYTHON) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
	  | $(LOCK_TOOLS)/bin/uv pip compile pyproject.toml - --extra test --universal --python-version 3.11 \
	      --generate-hashes --no-header --quiet -o $(LOCK)

clean:
	rm -rf $(VENV) $(LOCK_TOOLS) build *.egg-info
