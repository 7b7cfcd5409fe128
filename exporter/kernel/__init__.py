"""Kernel adapters: libbpf, /proc and sysfs readers, cgroups, MGLRU's debugfs, NUMA.

They know nothing of sources."""
