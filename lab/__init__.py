"""Kernel lab: boot real distro kernels under QEMU (TCG) with virtme-ng.

The dev machines' own kernel has no fentry/fexit, MGLRU or second NUMA node, so
the BPF paths that need them are tested inside a VM that shares this machine's
filesystem (see lab/README.md).
"""
