#!/usr/bin/env bash
# On a machine with one NVIDIA GPU, in under 10 minutes: the device tests (every optimizer, every path, on CUDA in
# float32 and float64 against the CPU loop; bf16 parameters; no recompiles), then `adamlab speed` on the GPU against
# torch's fused Adam/AdamW, each optimizer's step as a fraction of a same-bytes streaming kernel (the GPU's copy
# bandwidth for that traffic). Uses the python on PATH with this checkout on PYTHONPATH (torch must be installed).
# Results: $OUT (default benchmarks/results/gpu): device-tests.txt, speed.txt, speed.json, speed.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python - <<'PY' | tee "$OUT/machine.txt"
import platform, torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"python {platform.python_version()}")
PY
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}"
status=0
timeout 330 python -m pytest tests/test_device.py -q -p no:cacheprovider -x 2>&1 | tee "$OUT/device-tests.txt" \
  || status=$?
timeout 210 python -m adamlab.speed --device cuda --sets gpt,small --paths foreach,compiled --repeats 10 \
  --out "$OUT" 2>&1 | tee "$OUT/speed.txt" || status=$?
exit $status
