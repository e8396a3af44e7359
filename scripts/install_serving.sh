#!/bin/sh
# Install what `vwt-export serve` needs into the environment of PYTHON (default: python3), keeping its numpy 2 stack:
#
#     sh scripts/install_serving.sh .venv/bin/python          # `make setup` runs this
#
# Only the tritonserver binary of the nvidia-pytriton wheel (with its Python backend) and tritonclient are used. Their
# own pins (nvidia-pytriton: numpy<2.0.0; tritonclient: ml-dtypes<=0.5.4, via tritonclient[grpc] an older protobuf)
# would downgrade numpy, ml_dtypes and protobuf under torch, onnx and ONNX Runtime. So the two are installed without
# their dependencies, and the dependencies that do not conflict are installed on their own. pip would then print
# "ERROR: pip's dependency resolver does not currently take into account all the packages that are installed ...
# nvidia-pytriton 0.7.0 requires numpy<2.0.0, but you have numpy 2.x": --no-warn-conflicts silences that here, where
# it is expected; later installs into this environment (and `pip check`) still list those pins, for the same reason.
# `pip install 'vwt-export[serving]'` installs the same packages with their pins, i.e. numpy 1.x under the stack.
set -eu
PYTHON=${1:-python3}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts "$@"; }
pip_install --no-deps nvidia-pytriton==0.7.0 tritonclient==2.73.0
pip_install python-rapidjson 'urllib3>=2.0.7' 'aiohttp>=3.8.1,<4' 'geventhttpclient>=2.3.3' 'greenlet<3.4' 'grpcio>=1.81.1'
echo "serving: nvidia-pytriton 0.7.0 and tritonclient 2.73.0 installed without their numpy<2 / ml-dtypes / protobuf pins" \
     "(scripts/install_serving.sh says why; pip lists them as unmet later: expected)"
