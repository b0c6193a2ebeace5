#!/usr/bin/env bash
# Same measurement on emulated arm64 (qemu-aarch64 user mode), after run.sh has built the models.
# Fetches an arm64 Debian 12 python3.11 (apt-get download into a private apt state dir: the system's
# dpkg architectures are not touched) and arm64 wheels (pip --target --platform) into $A64.
# ORT's cpuinfo init segfaults on the host's x86 /proc/cpuinfo, so each run sees a fake arm64
# /proc/cpuinfo (bind mount in a private mount namespace, needs root) whose Features match the
# HWCAPs qemu reports for that -cpu model.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RESULTS="$HERE/../../docs/research/avx2"   # the small results live in the docs
WORK=${WORK:-/tmp/kompress-avx2}
A64=${A64:-/tmp/a64}
VENV=${VENV:-/tmp/avx2venv}
ARM_CPUS=${ARM_CPUS:-"cortex-a57 neoverse-n1 max"}
O="-o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o Dir::State::Lists=$A64/lists -o Dir::Cache=$A64/cache"
if [ ! -x "$A64/root/usr/bin/python3.11" ]; then
  mkdir -p "$A64/lists/partial" "$A64/cache/archives/partial" "$A64/debs" "$A64/root"
  apt-get $O update -qq
  (cd "$A64/debs" && apt-get $O download python3.11-minimal:arm64 libpython3.11-minimal:arm64 \
    libpython3.11-stdlib:arm64 libc6:arm64 libexpat1:arm64 zlib1g:arm64 libbz2-1.0:arm64 libcrypt1:arm64 \
    libffi8:arm64 liblzma5:arm64 libsqlite3-0:arm64 libssl3:arm64 libuuid1:arm64 libstdc++6:arm64 \
    libgcc-s1:arm64 libtinfo6:arm64 libncursesw6:arm64 libreadline8:arm64 libdb5.3:arm64)
  for d in "$A64"/debs/*.deb; do dpkg-deb -x "$d" "$A64/root"; done
fi
[ -d "$A64/site/onnxruntime" ] || "$VENV/bin/pip" install -q --target "$A64/site" --python-version 3.11 \
  --implementation cp --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
  --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 onnxruntime==1.31.1 onnx==1.23.2 numpy==2.4.6

base="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
for cpu in $ARM_CPUS; do
  case $cpu in
    cortex-a57) feat="$base"; part=0xd07 ;;
    neoverse-n1|cortex-a76) feat="$base atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"; part=0xd0c ;;
    max) feat="$base atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp asimdfhm sve i8mm svei8mm bf16"; part=0xd0c ;;
    *) echo "no cpuinfo template for $cpu" >&2; exit 1 ;;
  esac
  ci="$A64/cpuinfo-$cpu"
  : > "$ci"
  for p in 0 1; do printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: %s\nCPU revision\t: 1\n\n' "$p" "$feat" "$part" >> "$ci"; done
  label="qemu-aarch64-$cpu"
  mkdir -p "$WORK/out/$label"
  echo "== qemu-aarch64 -cpu $cpu"
  unshare -m sh -c "mount --bind '$ci' /proc/cpuinfo && \
    PYTHONPATH='$A64/site' qemu-aarch64 -cpu $cpu -L '$A64/root' '$A64/root/usr/bin/python3.11' '$HERE/measure.py' '$WORK' '$label'"
done
# Isolate the -cpu max failure: switch SME / SVE off one at a time (fake cpuinfo of `max` for all).
for cpu in max max,sme=off max,sve=off; do
  echo "== qemu-aarch64 -cpu $cpu"
  unshare -m sh -c "mount --bind '$A64/cpuinfo-max' /proc/cpuinfo && \
    PYTHONPATH='$A64/site' qemu-aarch64 -cpu $cpu -L '$A64/root' '$A64/root/usr/bin/python3.11' '$HERE/arm_sme_check.py' '$WORK'"
done 2>&1 | tee "$RESULTS/arm-sme-check.txt"
"$VENV/bin/python" "$HERE/simulate.py" "$WORK" qemu-aarch64-neoverse-n1 > "$RESULTS/simulate-aarch64-neoverse-n1.md"
"$VENV/bin/python" "$HERE/compare.py" "$WORK" "$RESULTS" > "$RESULTS/tables.md.tmp"
mv "$RESULTS/tables.md.tmp" "$RESULTS/tables.md"
