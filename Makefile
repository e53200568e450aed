# Two commands do all set-up: `make demo` and `make test`.
# Each creates .venv if missing and installs gradfit with the CPU build of torch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gradfit-installed
TORCH  := torch==2.13.0

.PHONY: demo test fuzz bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gradfit demo thermometer --out-dir demo-output

test: $(STAMP)
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the browser test of the HTML report will be skipped"
	$(BIN)/python -m pytest -q

# The suite draws the same hypothesis examples every run; this draws new ones (repeat it at will).
fuzz: $(STAMP)
	GRADFIT_HYPOTHESIS=explore $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_formula_fuzz.py tests/test_data_fuzz.py tests/test_symbolic.py tests/test_evaluate.py

bench: $(STAMP)
	$(BIN)/python benchmarks/thermometer.py

clean:
	rm -rf $(VENV) demo-output build *.egg-info src/*.egg-info
