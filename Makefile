# One-command set-up, demo and tests. Every target is safe to re-run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned for reproducible numbers; the wheels come from the machine's package mirror.
PINS   := torch==2.14.1 torchvision==0.29.1 timm==1.0.31 onnx==1.23.2 onnxruntime==1.31.1 onnx-graphsurgeon==0.6.1 onnxscript==0.7.2 polygraphy==0.53.6 matplotlib==3.11.2
LIB    := vwt_export/lib/libvwt_ort_ops.so

.PHONY: setup demo test clean

# The TensorRT plugin library is built too when TENSORRT_ROOT names a folder holding include/NvInferRuntime.h
# (the include/ of NVIDIA's open-source TensorRT repository at a release tag will do; never committed here).
# Default: ~/.cache/vwt-export/tensorrt, where it exists.
TENSORRT_ROOT ?= $(wildcard $(HOME)/.cache/vwt-export/tensorrt)
TRT_LIB := vwt_export/lib/libvwt_trt_plugin.so
NATIVE  := $(LIB) $(if $(TENSORRT_ROOT),$(TRT_LIB))

setup: $(VENV)/.setup-done $(NATIVE) $(VENV)/.trt-rtx-link $(VENV)/.serving

$(VENV)/.setup-done: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PINS) -e '.[test]'
	@touch $@

# TensorRT-RTX builds engines ahead of time on machines without a GPU, so CI can prove TensorRT's parser and
# builder accept the exported graphs. Optional: where the wheel does not install, those tests skip.
$(VENV)/.trt-rtx: $(VENV)/.setup-done
	$(BIN)/python -m pip install --quiet --disable-pip-version-check tensorrt-rtx==1.7.1.116 \
		|| echo "note: tensorrt-rtx did not install; the TensorRT tests will skip"
	@touch $@

# The serving extra (vwt-export serve, tests/serving): only nvidia-pytriton's tritonserver binary is used, so its
# numpy<2 pin (and tritonclient[grpc]'s protobuf pin) would only downgrade the pinned stack: install without them.
$(VENV)/.serving: $(VENV)/.setup-done
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0 tritonclient==2.73.0 \
		&& $(BIN)/python -m pip install --quiet --disable-pip-version-check python-rapidjson 'urllib3>=2.0.7' \
		'aiohttp>=3.8.1,<4' 'geventhttpclient>=2.3.3' 'greenlet<3.4' 'grpcio>=1.81.1' \
		|| echo "note: the serving extra did not install; the serving tests will skip"
	@touch $@

# TensorRT-RTX's ONNX parser opens the unversioned libtensorrt_rtx.so when it loads a plugin, and the wheel ships
# only libtensorrt_rtx.so.1: without this link the parser kills the process on the first graph with a vwt node.
$(VENV)/.trt-rtx-link: $(VENV)/.trt-rtx
	@d=$$($(BIN)/python -c "import importlib.util as u; s = u.find_spec('tensorrt_rtx_libs'); print(s.submodule_search_locations[0] if s else '')"); \
	if [ -n "$$d" ] && [ -f "$$d/libtensorrt_rtx.so.1" ]; then \
		ln -sfn libtensorrt_rtx.so.1 "$$d/libtensorrt_rtx.so" && echo "tensorrt-rtx: linked $$d/libtensorrt_rtx.so -> libtensorrt_rtx.so.1"; \
	fi
	@touch $@

# The ONNX Runtime op library (CUDA kernels too where nvcc exists); headers come from ONNXRUNTIME_INCLUDE_DIR or
# Debian's libonnxruntime-dev (scripts/fetch_ort_headers.py).
$(NATIVE) &: $(wildcard plugins/*.txt plugins/*/*.txt plugins/*/*.h plugins/*/*.cc plugins/*/*.cpp plugins/*/*.cu) $(VENV)/.setup-done
	cmake -S plugins -B build/plugins -DPython3_EXECUTABLE=$(abspath $(BIN)/python) \
		$(if $(TENSORRT_ROOT),-DTENSORRT_ROOT=$(abspath $(TENSORRT_ROOT))) > build-plugins.log 2>&1 || (cat build-plugins.log; exit 1)
	cmake --build build/plugins -j2 >> build-plugins.log 2>&1 || (cat build-plugins.log; exit 1)
	cmake --install build/plugins --prefix vwt_export >> build-plugins.log 2>&1
	@grep "vwt:" build-plugins.log

demo: setup
	$(BIN)/vwt-export deit_s --mode inter --demo --out out/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf out build build-plugins.log vwt_export/lib $(VENV) .pytest_cache
