#!/usr/bin/env bash
# The GPU checks and benchmarks of the speed issue, for a machine with a CUDA
# GPU and a python3 that has torch (e.g. the device tool's machines). Each
# part is one command well inside 10 minutes; logs go to $OUT (or bench-gpu/).
#
#   bash bench/gpu.sh tests       # tests/test_cuda.py: engine vs CPU reference, host syncs, bf16, CLI on the GPU
#   bash bench/gpu.sh vgg         # the VGG16-BN 21x21 plane, bf16 then fp32: time and fraction of peak
#   bash bench/gpu.sh protocol    # digits plane and PreResNet-20 curve against the papers' protocol on the GPU
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-gpu}
mkdir -p "$out"
python3 -c "import landscape" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/pip.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
for part in "${@:-tests}"; do
  case "$part" in
    tests) python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.txt" ;;
    vgg) python3 bench/vgg_plane.py 2>&1 | tee "$out/vgg_plane_bf16.txt"
         python3 bench/vgg_plane.py --precision fp32 2>&1 | tee "$out/vgg_plane_fp32.txt" ;;
    protocol) python3 bench/plane_protocol.py --device cuda 2>&1 | tee "$out/plane_protocol.txt"
              python3 bench/preresnet_curve.py --device cuda 2>&1 | tee "$out/preresnet_curve.txt" ;;
    *) echo "bench/gpu.sh: unknown part '$part' (tests, vgg, protocol)" >&2; exit 2 ;;
  esac
done
