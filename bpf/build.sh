#!/usr/bin/env bash
# Compile bpf/*.bpf.c into libbpf CO-RE objects in exporter/bpf/ (where the package looks).
# vmlinux.h comes from this machine's BTF; CO-RE relocations make the objects load on any
# kernel with BTF, so they are built once, not at every start.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../exporter/bpf}
gen=$here/.gen
mkdir -p "$out" "$gen"
if [ ! -s "$gen/vmlinux.h" ]; then
  bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$gen/vmlinux.h.tmp"
  mv "$gen/vmlinux.h.tmp" "$gen/vmlinux.h"
fi
for src in "$here"/*.bpf.c; do
  name=$(basename "$src" .c)
  obj=$out/$name.o
  clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_x86 \
    -I"$gen" -I"$here" -c "$src" -o "$obj.tmp"
  llvm-strip -g "$obj.tmp" 2>/dev/null || true
  mv "$obj.tmp" "$obj"
  echo "built $obj"
done
