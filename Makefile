# Two commands for a fresh machine: `make demo` runs Part 1 on the generated demo data set,
# `make test` runs the test suite. Both create .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install demo test browser clean-venv

install: $(STAMP)

# TORCH_INDEX: a package index to take torch and torchvision from first, e.g. PyTorch's CPU-only
# builds on a machine with no NVIDIA GPU (without the 4.1 GB of CUDA libraries the Linux build brings):
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PINS := $(shell grep -E '^(torch|torchvision)==' requirements.txt)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=61"
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PINS))
	@# pip's own error for a full disk is one line at the end of a long log; say what it needs.
	$(PY) -m pip install --quiet -r requirements.txt || { \
		echo "make install: pip failed. With PyTorch's CUDA build the environment takes about 7 GB" \
			"(6.7 GB measured); free space where $(VENV) is:"; df -h $(VENV) | tail -n 1; \
		echo "With no NVIDIA GPU: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu"; exit 1; }
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: install
	$(PY) scripts/0_downloadData.py $(ARGS)
	$(PY) scripts/1_prepareData.py $(ARGS)
	$(PY) scripts/2_refineDNN.py $(ARGS)
	$(PY) scripts/3_runDNN.py $(ARGS)
	$(PY) scripts/4_trainSVM.py $(ARGS)
	$(PY) scripts/5_evaluate.py $(ARGS)

test: install browser
	IMGCLASS_OFFLINE=1 $(PY) -m pytest -q

# The web page test drives a real headless Chromium: Debian's chromium + chromium-driver.
browser:
	@if command -v chromium >/dev/null && test -x /usr/bin/chromedriver; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null || \
		{ apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }; \
	else echo "browser: chromium not found; the web page test will be skipped. Install it with:"; \
		echo "  sudo apt-get install -y chromium chromium-driver"; fi

clean-venv:
	rm -rf $(VENV)
