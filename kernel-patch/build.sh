#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Build a QEMU/virtme lab kernel: Linux 6.12 (Debian linux-source-6.12)
# plus the series in series/. Prints the path of the bzImage.
#
#   PAGEHEAT_KERNEL_CACHE  work directory (default /var/cache/pageheat-kernel)
#   PAGEHEAT_KERNEL_JOBS   make -j (default 2)
#
# Idempotent: a bzImage built from the same series and config is reused.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

hash=$(ph_series_hash)
image=$PH_CACHE/bzImage-$hash
src=$PH_CACHE/build/src
obj=$PH_CACHE/build/obj

if [ -f "$image" ]; then
	ph_log "series $hash already built"
	ln -sfn "$(basename "$image")" "$PH_CACHE/bzImage"
	echo "$image"
	exit 0
fi

ph_unpack
ph_patched_tree "$src"
ph_configure "$src" "$obj"
ph_log "building bzImage (make -j$PH_JOBS)"
make -s -C "$src" O="$obj" -j"$PH_JOBS" bzImage
cp "$obj/arch/x86/boot/bzImage" "$image.tmp"
mv "$image.tmp" "$image"
ln -sfn "$(basename "$image")" "$PH_CACHE/bzImage"
ph_log "built series $hash"
echo "$image"
