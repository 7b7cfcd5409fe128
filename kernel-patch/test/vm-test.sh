#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs inside the lab VM (see ../README.md): checks MGLRU, the BTF of the
# tracepoints and hooks, then harvests a test process through debugfs
# aging and through the kfunc, with and without the mm_struct filter.
set -u
BIN=${1:-/var/cache/pageheat-kernel/test}

mount -t debugfs none /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null

echo "== kernel $(uname -r), lru_gen/enabled=$(cat /sys/kernel/mm/lru_gen/enabled)"
echo "== BTF"
bpftool btf dump file /sys/kernel/btf/vmlinux |
	grep -E "'(btf_trace_mglru_[a-z_]+|bpf_lru_gen_[a-z_]+)'"
echo "== cgroup of this shell: $(cat /proc/self/cgroup)"

# one CPU for everything: see the comment in touch.c
taskset -p 1 $$ > /dev/null
"$BIN/touch" 32 > /tmp/touch.pid &
sleep 2
pid=$(cat /tmp/touch.pid)
echo "== touch: pid $pid, $(grep AnonHugePages /proc/$pid/smaps_rollup)"

# memcg ID of the root memcg and its min or max generation on node 0
memcg_id() {
	awk '$1 == "memcg" && $3 == "/" { print $2; exit }' /sys/kernel/debug/lru_gen
}
gen() {
	awk -v id="$(memcg_id)" -v want="$1" '$1 == "memcg" { m = ($2 == id) }
		m && $1 == "node" { n = ($2 == 0) }
		m && n && $1 ~ /^[0-9]+$/ { if (!min) min = $1; max = $1 }
		END { print (want == "min" ? min : max) }' /sys/kernel/debug/lru_gen
}
lru_gen_cmd() {
	echo "$*" > /sys/kernel/debug/lru_gen && echo "debugfs: $*"
}

echo "== aging through debugfs, all processes"
"$BIN/harvest" -e -n 3 &
hp=$!
for i in 1 2 3; do sleep 1; lru_gen_cmd + "$(memcg_id) 0 $(gen max) 1 1"; done
wait $hp

echo "== aging through bpf_lru_gen_run_aging(), all processes"
"$BIN/harvest" -n 3
echo "== aging through bpf_lru_gen_run_aging(), only pid $pid (fmod_ret filter)"
"$BIN/harvest" -p "$pid" -n 3
echo "== eviction of the oldest generation (file pages): rmap look-around"
"$BIN/harvest" -e -n 2 &
hp=$!
sleep 1; lru_gen_cmd - "$(memcg_id) 0 $(gen min) 0"
wait $hp
echo "== bpf_lru_gen_run_aging() on a child cgroup, by cgroup id"
cg=/sys/fs/cgroup
grep -q " $cg cgroup2 " /proc/mounts || mount -t cgroup2 none $cg
echo +memory > $cg/cgroup.subtree_control
mkdir -p $cg/pageheat
(echo $BASHPID > $cg/pageheat/cgroup.procs && exec "$BIN/touch" 8) > /tmp/touch2.pid &
sleep 2
pid2=$(cat /tmp/touch2.pid)
echo "touch: pid $pid2 in $(cat /proc/$pid2/cgroup), cgroup id $(stat -c %i $cg/pageheat)"
"$BIN/harvest" -c "$(stat -c %i $cg/pageheat)" -p "$pid2" -n 2
kill "$pid2"
echo "== bpf_lru_gen_run_aging() with a bad cgroup id"
"$BIN/harvest" -c 999999 -n 1
kill "$pid"
