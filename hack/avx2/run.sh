#!/usr/bin/env bash
# Measure int8 forms of the digits MLP (and a random conv net) under emulated x86 CPUs
# without VNNI (qemu-user TCG) and natively. See README.md. Needs root for apt (qemu-user).
# Env: WORK (scratch dir, default /tmp/kompress-avx2), VENV (default /tmp/avx2venv),
#      CPUS (qemu -cpu models, default "Haswell Skylake-Client Cascadelake-Server Nehalem").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RESULTS="$HERE/../../docs/research/avx2"   # the small results live in the docs
WORK=${WORK:-/tmp/kompress-avx2}
VENV=${VENV:-/tmp/avx2venv}
CPUS=${CPUS:-"Haswell Skylake-Client Cascadelake-Server Nehalem"}

command -v qemu-x86_64 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; }
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q onnxruntime==1.31.1 onnx numpy; }
PY="$VENV/bin/python"
mkdir -p "$WORK" "$RESULTS"
gcc -O2 -o "$WORK/cpuid" "$HERE/cpuid.c"

rm -rf "$WORK/out"
"$PY" "$HERE/make_models.py" "$WORK"

echo "== native"
mkdir -p "$WORK/out/native"
"$WORK/cpuid" | tee "$WORK/out/native/cpuid.txt"
"$PY" "$HERE/measure.py" "$WORK" native

# One qemu process at a time (TCG is slow and the machine is shared).
for cpu in $CPUS; do
  echo "== qemu-x86_64 -cpu $cpu"
  d="$WORK/out/qemu-$cpu"
  mkdir -p "$d"
  { qemu-x86_64 --version | head -1; qemu-x86_64 -cpu "$cpu" "$WORK/cpuid" 2>&1; } | tee "$d/cpuid.txt"
  qemu-x86_64 -cpu "$cpu" "$PY" "$HERE/measure.py" "$WORK" "qemu-$cpu" 2> >(grep -v "TCG doesn't support requested feature" >&2)
done

"$PY" "$HERE/compare.py" "$WORK" "$RESULTS" | tee "$RESULTS/tables.md.tmp"
mv "$RESULTS/tables.md.tmp" "$RESULTS/tables.md"

# Native-only speed check (U8S8 vs U8U8 on this CPU); qemu timings would be meaningless.
"$PY" "$HERE/bench.py" "$WORK" 2>&1 | grep -v "^WARNING:root" | tee "$RESULTS/bench-native.txt"

# numpy re-computation of the digits dynamic forms: exact int32 vs vpmaddubsw (int16-pair saturation).
"$PY" "$HERE/simulate.py" "$WORK" qemu-Haswell | tee "$RESULTS/simulate.md"
