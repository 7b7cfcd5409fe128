"""The BPF programs' licence (issue 15): each bpf/*.bpf.c's SEC("license") string, and each
bpf/ source's SPDX line, is what LICENSE grants for bpf/. Pure file reading.

LICENSE's exception paragraph names the SPDX expression of bpf/ (``GPL-2.0 OR BSD-2-Clause``)
and the license string the programs carry (``"Dual BSD/GPL"``); the test reads both from it,
so that LICENSE and the sources cannot drift apart.
"""

from __future__ import annotations

import re

from conftest import ROOT

BPF = ROOT / "bpf"
# The strings the kernel counts as GPL-compatible, each with the licences it names
# (include/linux/license.h, license_is_gpl_compatible()): a program whose string is not in this
# list cannot call the GPL-only helpers (bpf_probe_read_kernel, ...) and fails to load.
KERNEL_GPL_COMPATIBLE = {
    "GPL": {"GPL"},
    "GPL v2": {"GPL"},
    "GPL and additional rights": {"GPL"},
    "Dual BSD/GPL": {"BSD", "GPL"},
    "Dual MIT/GPL": {"MIT", "GPL"},
    "Dual MPL/GPL": {"MPL", "GPL"},
}
# SPDX identifiers of each licence family a kernel license string names.
FAMILY = {"GPL": ("GPL-2.0", "GPL-2.0-only", "GPL-2.0-or-later"),
          "BSD": ("BSD-2-Clause", "BSD-3-Clause"), "MIT": ("MIT",), "MPL": ("MPL-1.1", "MPL-2.0")}


def granted() -> tuple[str, str]:
    """(SPDX expression, license string) LICENSE grants for the BPF programs in bpf/."""
    text = (ROOT / "LICENSE").read_text()
    exception = text[text.index("Exception: the BPF programs in bpf/"):]
    exception = " ".join(exception.split("\n\n", 1)[0].split())
    spdx = re.search(r"dual-licensed, (\S+ OR \S+),", exception)
    string = re.search(r'license string, "([^"]+)"', exception)
    assert spdx and string, "LICENSE no longer says what bpf/ is licensed under"
    return spdx.group(1), string.group(1)


def test_license_strings_are_what_license_grants() -> None:
    spdx, string = granted()
    options = set(spdx.split(" OR "))
    # The string LICENSE names is one the kernel accepts as GPL-compatible, and every licence
    # it names is one of the expression's options (and the other way round).
    assert string in KERNEL_GPL_COMPATIBLE, string
    names = KERNEL_GPL_COMPATIBLE[string]
    assert all(options & set(FAMILY[n]) for n in names), (string, spdx)
    assert all(any(o in FAMILY[n] for n in names) for o in options), (string, spdx)
    sources = sorted(BPF.glob("*.bpf.c"))
    assert sources
    for src in sources:
        found = re.findall(r'SEC\("license"\)\s*=\s*"([^"]*)"', src.read_text())
        assert found == [string], (src.name, found)


def test_every_bpf_source_has_the_granted_spdx_line() -> None:
    spdx, _ = granted()
    for option in spdx.split(" OR "):
        if option.startswith("BSD"):
            assert (ROOT / "LICENSES" / option).is_file(), f"LICENSES/{option} is missing"
    files = sorted([*BPF.glob("*.c"), *BPF.glob("*.h")])
    assert files
    for f in files:
        first = f.read_text().splitlines()[0]
        m = re.fullmatch(r"(?://|/\*) SPDX-License-Identifier: (.+?)(?: \*/)?", first)
        assert m and m.group(1) == spdx, (f.name, first)
