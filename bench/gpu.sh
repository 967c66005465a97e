#!/usr/bin/env bash
# The GPU checks and benchmarks of the speed issue, for a machine with a CUDA
# GPU and a python3 that has torch (e.g. the device tool's machines). The
# package is used from this checkout (PYTHONPATH), not installed. Each part
# is one command meant to fit in 10 minutes; logs go to $OUT (or bench-gpu/),
# written as the run goes, so a part cut short still leaves its log.
#
#   bash bench/gpu.sh tests       # tests/test_cuda.py: engine vs CPU reference, host syncs, bf16, CLI on the GPU
#   bash bench/gpu.sh vgg-small   # the VGG16-BN plane at 11x11, bf16, with vmap and with loop: a first, shorter timing
#   bash bench/gpu.sh vgg-bf16    # the VGG16-BN 21x21 plane in bf16: time and fraction of peak
#   bash bench/gpu.sh vgg-fp32    # the same in fp32 (TF32 convolutions)
#   bash bench/gpu.sh protocol    # digits plane and PreResNet-20 curve against the papers' protocol on the GPU
#
# The exit status is non-zero when any command of the parts failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1  # a part cut short by a time limit still leaves its log (python buffers a pipe)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-bench-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
rc=0
run() {  # run LOG COMMAND...: the command's output to the screen and to $out/LOG
  local log=$1; shift
  "$@" 2>&1 | tee "$out/$log"
  rc=$((rc | PIPESTATUS[0]))
}
vgg=(python3 bench/vgg_plane.py --bn-stats batches --progress)
for part in "${@:-tests}"; do
  case "$part" in
    tests) run test_cuda.txt python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py ;;
    vgg-small) run vgg_plane_11_bf16.txt "${vgg[@]}" --grid 11
               run vgg_plane_11_bf16_loop.txt "${vgg[@]}" --grid 11 --strategy loop ;;
    vgg-bf16) run vgg_plane_bf16.txt "${vgg[@]}" ;;
    vgg-fp32) run vgg_plane_fp32.txt "${vgg[@]}" --precision fp32 ;;
    protocol) run plane_protocol.txt python3 bench/plane_protocol.py --device cuda
              run preresnet_curve.txt python3 bench/preresnet_curve.py --device cuda ;;
    *) echo "bench/gpu.sh: unknown part '$part' (tests, vgg-small, vgg-bf16, vgg-fp32, protocol)" >&2; exit 2 ;;
  esac
done
exit $rc
