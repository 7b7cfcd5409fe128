# SPDX-License-Identifier: GPL-2.0
# Shared by build.sh and check.sh: unpack, patch and configure a 6.12 tree.
# Source this file; it only defines variables and functions.

PH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PH_SERIES=$PH_DIR/series
PH_TARBALL=${PAGEHEAT_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
PH_CACHE=${PAGEHEAT_KERNEL_CACHE:-/var/cache/pageheat-kernel}
PH_PRISTINE=$PH_CACHE/linux-source-6.12
PH_JOBS=${PAGEHEAT_KERNEL_JOBS:-2}

# Options the lab kernel needs on top of virtme-configkernel --defconfig.
PH_CONFIG_ON=(
	BPF BPF_SYSCALL BPF_JIT BPF_EVENTS
	DEBUG_INFO DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT DEBUG_INFO_BTF
	LRU_GEN LRU_GEN_ENABLED LRU_GEN_BPF_HARVEST
	NUMA MEMCG CGROUPS PROC_PAGE_MONITOR TRANSPARENT_HUGEPAGE
	DAMON DAMON_VADDR DAMON_PADDR DAMON_SYSFS
	FTRACE FUNCTION_TRACER DYNAMIC_FTRACE KPROBES KPROBE_EVENTS
	DEBUG_FS NET_9P NET_9P_VIRTIO 9P_FS
	EXT4_FS ZRAM	# file pages on a loop device and swap, for the lab tests
)
PH_CONFIG_OFF=(DEBUG_INFO_REDUCED DEBUG_INFO_NONE MODULE_SIG)

ph_log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
ph_die() { ph_log "error: $*"; exit 1; }

# Patches in the order given by series/series (quilt style, '#' comments).
ph_patches() {
	sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$PH_SERIES/series" |
		while read -r p; do echo "$PH_SERIES/$p"; done
}

# Identifies a build: the patches plus everything that decides the config.
ph_series_hash() {
	{ ph_patches | xargs cat; cat "$PH_DIR/lib.sh"; } | sha256sum | cut -c1-16
}

# Unpack the Debian source tarball once; re-unpack if the tarball changes.
ph_unpack() {
	local stamp=$PH_PRISTINE/.pageheat-unpacked
	local want
	want=$(stat -c '%s %Y' "$PH_TARBALL") || ph_die "no $PH_TARBALL"
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
		return
	fi
	ph_log "unpacking $PH_TARBALL into $PH_CACHE"
	mkdir -p "$PH_CACHE"
	rm -rf "$PH_PRISTINE"
	tar -C "$PH_CACHE" -xf "$PH_TARBALL"
	[ -f "$PH_PRISTINE/Makefile" ] || ph_die "tarball did not unpack to $PH_PRISTINE"
	echo "$want" > "$stamp"
}

# ph_patched_tree SRC: make SRC a pristine copy and apply the series.
# rsync keeps the mtimes of untouched files, so an existing O= build
# only recompiles what the series changes.
ph_patched_tree() {
	local src=$1 p
	mkdir -p "$src"
	rsync -a --delete --exclude=/.pageheat-unpacked "$PH_PRISTINE/" "$src/"
	for p in $(ph_patches); do
		ph_log "applying $(basename "$p")"
		patch -d "$src" -p1 -F0 -N --batch -s < "$p" ||
			ph_die "$(basename "$p") does not apply cleanly"
	done
}

# ph_configure SRC OBJ: write OBJ/.config, touching it only if it changes.
ph_configure() {
	local src=$1 obj=$2 cfg=$2.cfg opt
	mkdir -p "$obj" "$cfg"
	(cd "$src" && virtme-configkernel --defconfig O="$cfg" >/dev/null 2>&1) ||
		ph_die "virtme-configkernel failed"
	"$src/scripts/config" --file "$cfg/.config" \
		$(printf -- '-e %s ' "${PH_CONFIG_ON[@]}") \
		$(printf -- '-d %s ' "${PH_CONFIG_OFF[@]}")
	make -s -C "$src" O="$cfg" olddefconfig >/dev/null
	for opt in "${PH_CONFIG_ON[@]}"; do
		grep -qx "CONFIG_$opt=y" "$cfg/.config" ||
			ph_die "CONFIG_$opt did not stick (missing dependency?)"
	done
	if ! cmp -s "$cfg/.config" "$obj/.config"; then
		cp "$cfg/.config" "$obj/.config"
		make -s -C "$src" O="$obj" olddefconfig >/dev/null
	fi
}
