PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench locales clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/katilim run --or-chat

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

# Re-extract message keys and update / compile the tr, en, ar catalogs.
locales: $(STAMP)
	$(BIN)/python -m bot.i18n_tools update
	$(BIN)/python -m bot.i18n_tools compile

clean:
	rm -rf $(VENV) build *.egg-info
