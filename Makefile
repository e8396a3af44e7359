# One-command set-up, demo and tests. Every target is safe to re-run, and does nothing when nothing changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned for reproducible numbers; the wheels come from the machine's package mirror.
PINS   := torch==2.14.1 torchvision==0.29.1 timm==1.0.31 onnx==1.23.2 onnxruntime==1.31.1 onnx-graphsurgeon==0.6.1 onnxscript==0.7.2 polygraphy==0.53.6 matplotlib==3.11.2
# the native build's target (touched after each build: CMake's install keeps the time of an unchanged file); its
# inputs are the C++/CUDA sources and the two scripts that configure them
NATIVE := vwt_export/lib/libvwt_ort_ops.so
NATIVE_SOURCES := $(wildcard plugins/*.txt plugins/*/*.txt plugins/*/*.h plugins/*/*.cc plugins/*/*.cpp plugins/*/*.cu) \
	scripts/build_native.py scripts/fetch_ort_headers.py

.PHONY: setup native demo test test-fast wheel check-wheel clean

setup: $(VENV)/.setup-done $(NATIVE) $(VENV)/.trt-rtx-link $(VENV)/.serving

# The project itself, editable. VWT_SKIP_NATIVE: its build hook would compile the op library inside pip, silently;
# the $(NATIVE) step below does the same build in the open.
$(VENV)/.setup-done: pyproject.toml Makefile hatch_build.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	VWT_SKIP_NATIVE=1 $(BIN)/python -m pip install --quiet --disable-pip-version-check $(PINS) -e '.[test]'
	@touch $@

# TensorRT-RTX builds engines ahead of time on machines without a GPU, so CI can prove TensorRT's parser and
# builder accept the exported graphs. Optional: where the wheel does not install, those tests skip.
$(VENV)/.trt-rtx: $(VENV)/.setup-done
	$(BIN)/python -m pip install --quiet --disable-pip-version-check tensorrt-rtx==1.7.1.116 \
		|| echo "note: tensorrt-rtx did not install; the TensorRT tests will skip"
	@touch $@

# The serving extra (vwt-export serve, tests/serving), without the pins that would downgrade numpy: see the script.
$(VENV)/.serving: $(VENV)/.setup-done scripts/install_serving.sh
	sh scripts/install_serving.sh $(BIN)/python || echo "note: the serving extra did not install; the serving tests will skip"
	@touch $@

# TensorRT-RTX's ONNX parser opens the unversioned libtensorrt_rtx.so when it loads a plugin, and the wheel ships
# only libtensorrt_rtx.so.1: without this link the parser kills the process on the first graph with a vwt node.
$(VENV)/.trt-rtx-link: $(VENV)/.trt-rtx
	@d=$$($(BIN)/python -c "import importlib.util as u; s = u.find_spec('tensorrt_rtx_libs'); print(s.submodule_search_locations[0] if s else '')"); \
	if [ -n "$$d" ] && [ -f "$$d/libtensorrt_rtx.so.1" ]; then \
		ln -sfn libtensorrt_rtx.so.1 "$$d/libtensorrt_rtx.so" && echo "tensorrt-rtx: linked $$d/libtensorrt_rtx.so -> libtensorrt_rtx.so.1"; \
	fi
	@touch $@

# The native libraries into vwt_export/lib/: scripts/build_native.py, the same build the wheel runs (hatch_build.py).
# It reads TENSORRT_ROOT, ONNXRUNTIME_INCLUDE_DIR and VWT_WITH_CUDA from the environment; CMake's output goes to
# build-plugins.log. `make native` rebuilds after changing one of those.
$(NATIVE): $(NATIVE_SOURCES) $(VENV)/.setup-done
	$(BIN)/python scripts/build_native.py --log build-plugins.log
	@touch $@

native:
	@rm -f $(NATIVE)
	@$(MAKE) --no-print-directory $(NATIVE)

demo: setup
	$(BIN)/vwt-export deit_s --mode inter --demo --out out/demo

# Everything but the wheel check, as CI runs it (.ci/run), and the everyday tier: the tests not marked slow
# (pyproject.toml says which).
# Two workers, each test file on one of them (module fixtures stay shared): many tests wait on single-threaded
# Python or on a subprocess, and the real-data tier's file runs beside the rest.
test: setup
	$(BIN)/python -m pytest -q -m "not release" -n 2 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile

# dist/vwt_export-<version>-py3-none-<platform>.whl, carrying the op library; check-wheel installs it into a fresh
# virtual environment and runs a VWT graph there (scripts/check_wheel.py, through tests/test_wheel.py).
wheel: $(VENV)/.setup-done
	$(BIN)/python -m pip wheel --no-deps --disable-pip-version-check -w dist .

check-wheel: setup
	$(BIN)/python -m pytest -q -m release

clean:
	rm -rf out build build-plugins.log vwt_export/lib dist $(VENV) .pytest_cache
