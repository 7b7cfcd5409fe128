"""Guest-side lab tests: they run inside a lab VM (tests/lab/test_lab.py boots it).

The gate below is deliberate and documented (lab/README.md, docs/KERNELS.md): outside a lab
VM these files are not even collected, so a host ``pytest tests/`` neither runs nor counts
them as skipped. They need a kernel with MGLRU, fexit and (for test_numa) two NUMA nodes,
which only the lab VMs provide. To run them by hand: ``.venv/bin/python -m pytest tests/lab``.
"""

import os

if os.environ.get("PAGEHEAT_LAB_GUEST") != "1":
    collect_ignore_glob = ["test_*.py"]
elif "mglru-hook" not in os.environ.get("PAGEHEAT_LAB_SOURCES", ""):
    collect_ignore_glob = ["test_hook.py"]  # needs the patched kernel (kernel-patch/)
