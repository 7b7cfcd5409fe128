#!/bin/sh
# Prelude that lab/vm.py runs every guest command through: usage
#   guest-init.sh CMD [ARG...]
# Why: BPF work needs debugfs (MGLRU's /sys/kernel/debug/lru_gen), tracefs and a
# bpffs; virtme-ng mounts the first two on the kernels we use but not bpffs, and
# Debian's 6.1 kernel ships MGLRU switched off.  Idempotent; a mount that fails
# is reported on stderr and the command still runs (the test decides).
# PAGEHEAT_LAB_MGLRU=0 leaves MGLRU as the kernel booted it; PAGEHEAT_LAB_THP: see below.

mnt() { # mnt FSTYPE DIR
    grep -qs " $2 " /proc/mounts && return 0
    mkdir -p "$2" 2>/dev/null
    mount -t "$1" "$1" "$2" || echo "guest-init: mount -t $1 $2 failed" >&2
}

mnt debugfs /sys/kernel/debug
mnt tracefs /sys/kernel/tracing
mnt bpf /sys/fs/bpf
grep -qs ' /sys/fs/cgroup ' /proc/mounts || mnt cgroup2 /sys/fs/cgroup

if [ "${PAGEHEAT_LAB_MGLRU:-1}" != 0 ] && [ -w /sys/kernel/mm/lru_gen/enabled ]; then
    case "$(cat /sys/kernel/mm/lru_gen/enabled)" in
        0x0000) echo y > /sys/kernel/mm/lru_gen/enabled \
                    || echo "guest-init: cannot enable MGLRU" >&2 ;;
    esac
fi

# Debian kernels boot with THP "always"; the dev machines run "madvise".  Under
# "always" a workload's big anonymous buffers become PMD-mapped huge pages, whose
# Accessed bits go through pmdp_test_and_clear_young, not ptep_*: match the dev
# machines unless PAGEHEAT_LAB_THP says otherwise (always|madvise|never|keep).
THP=/sys/kernel/mm/transparent_hugepage/enabled
if [ "${PAGEHEAT_LAB_THP:-madvise}" != keep ] && [ -w "$THP" ]; then
    echo "${PAGEHEAT_LAB_THP:-madvise}" > "$THP" || echo "guest-init: cannot set THP" >&2
fi

# bpftrace/bpftool may be locked out from unprivileged use; we run as root,
# but keep the memlock limit out of the way for older libbpf.
ulimit -l unlimited 2>/dev/null

exec "$@"
