# Everything a machine needs is installed from here; nothing is installed by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
EXAMPLE_ARGS := examples/digits/digits_cnn.h5 --target tflite \
	--calib calibration_data/digits/calib.npz --val calibration_data/digits/val.npz

.PHONY: example test conformance bench bench-more clean

$(PY):
	python3 -m venv $(VENV)

# The example needs only the TensorFlow extra.
$(VENV)/.installed-tf: pyproject.toml | $(PY)
	$(PIP) install -e ".[tf]"
	touch $@

# torch goes first, pinned, so that no later requirement pulls a CUDA build of it.
$(VENV)/.installed-all: pyproject.toml | $(PY)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[all,test]"
	touch $@ $(VENV)/.installed-tf

example: $(VENV)/.installed-tf
	$(VENV)/bin/edgeopt compress $(EXAMPLE_ARGS) -o edgeopt_out/digits_cnn

test: $(VENV)/.installed-all
	bash scripts/system-packages.sh
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Every cell of the real-models conformance suite (make test runs the cells each model marks for CI).
conformance: $(VENV)/.installed-all
	bash scripts/system-packages.sh
	EDGEOPT_CONFORMANCE=full $(PY) -m pytest -q -p no:cacheprovider tests/conformance

# edgeopt against the peer tools and the machine's peak: writes benchmarks/RESULTS.md (about 12 minutes).
bench: $(VENV)/.installed-all
	$(PY) benchmarks/peers.py

bench-more: $(VENV)/.installed-all
	$(PY) benchmarks/nine_paths.py
	$(PY) benchmarks/prune_cost.py

clean:
	rm -rf $(VENV) edgeopt_out
