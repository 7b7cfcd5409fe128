#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Cheap CI check of the series: checkpatch --strict on every patch, then
# apply it to a pristine 6.12 tree and compile only the objects it touches.
# Exits non-zero on any failure. Cache: $PAGEHEAT_KERNEL_CACHE/check.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Objects built from the files the series changes (mm/vmscan.c and the
# users of include/trace/events/vmscan.h).
OBJECTS=(mm/vmscan.o mm/shrinker.o mm/memcontrol.o)

src=$PH_CACHE/check/src
obj=$PH_CACHE/check/obj
start=$SECONDS
failed=0

ph_unpack

for p in $(ph_patches); do
	out=$("$PH_PRISTINE/scripts/checkpatch.pl" --strict "$p" 2>&1 || true)
	summary=$(grep '^total:' <<< "$out") || summary="no summary"
	ph_log "checkpatch $(basename "$p"): $summary"
	case $summary in
	"total: 0 errors"*) ;;
	*) printf '%s\n' "$out" >&2; failed=1 ;;
	esac
done
[ "$failed" = 0 ] || ph_die "checkpatch reported errors"

ph_patched_tree "$src"
ph_configure "$src" "$obj"
ph_log "compiling ${OBJECTS[*]}"
make -s -C "$src" O="$obj" -j"$PH_JOBS" KCFLAGS=-Werror "${OBJECTS[@]}"
ph_log "check passed in $((SECONDS - start)) s"
