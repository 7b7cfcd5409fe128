"""Fetch and cache the kernels the lab boots.

Debian's kernel packages are downloaded with ``apt-get download`` and unpacked
with ``dpkg-deb -x`` into a cache; nothing is installed on the host.  virtme-ng
finds modules next to the image (``<root>/boot/vmlinuz-V`` ->
``<root>/lib/modules/V``) and shares that tree with the guest, so the modules are
decompressed *inside the unpacked tree*: the busybox in virtme's initramfs cannot
insmod ``.ko.xz`` (virtme only decompresses ``.zst``) and the host's /lib/modules
stays untouched.

CLI::

    python3 -m lab.kernels fetch [NAME...]   # default: every Debian kernel
    python3 -m lab.kernels path NAME         # print the bzImage to boot
    python3 -m lab.kernels list

Cache: ``$PAGEHEAT_LAB_CACHE`` or /var/cache/pageheat-lab/.  A fetched kernel has
a ``<name>.json`` stamp there; when it and its files exist, fetch does nothing
(no apt call), so a second run costs milliseconds.

``patched-6.12`` is Debian's 6.12 source with kernel-patch/'s series, built by
kernel-patch/build.sh (about 15 minutes the first time on a 2-core machine, cached by the
series' hash afterwards). Everything it needs is built in: it has no modules.

Custom kernels: ``PAGEHEAT_LAB_KERNEL_<NAME>=/path/bzImage``
makes ``NAME`` (case-insensitive, ``-``/``.`` written as ``_``) bootable; it also
overrides a built-in name of the same spelling.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/pageheat-lab")
ENV_CACHE = "PAGEHEAT_LAB_CACHE"
ENV_KERNEL_PREFIX = "PAGEHEAT_LAB_KERNEL_"


@dataclass(frozen=True)
class DebianKernel:
    """A Debian kernel flavour, chosen by package-name patterns in preference order."""

    name: str
    patterns: tuple[str, ...]  # anchored regexes for apt-cache search --names-only
    notes: str


DEBIAN_KERNELS: dict[str, DebianKernel] = {
    k.name: k
    for k in (
        # Not the cloud flavour: it lacks 9p, which virtme-ng needs for its root fs.
        DebianKernel(
            "deb-6.12",
            (r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",),
            "MGLRU on by default, DAMON (vaddr+paddr), fentry/fexit, kprobes",
        ),
        DebianKernel(
            "deb-6.1",
            (
                r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
                r"^linux-image-6\.1\.0-[0-9]+-amd64$",
            ),
            "MGLRU built in but off (lab/guest-init.sh enables it), fentry/fexit",
        ),
    )
}


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel: what lab.vm hands to ``vng -r``."""

    name: str
    vmlinuz: Path
    version: str | None = None  # uname -r, when known
    package: str | None = None  # Debian package it came from


def cache_dir() -> Path:
    """The cache root; an env override lets CI or a user put it elsewhere."""
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE)


def _env_name(name: str) -> str:
    return ENV_KERNEL_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def custom_kernel(name: str) -> Kernel | None:
    """A kernel given by path in ``PAGEHEAT_LAB_KERNEL_<NAME>``, if set."""
    value = os.environ.get(_env_name(name))
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{_env_name(name)}={value}: no such file")
    return Kernel(name=name, vmlinuz=path)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key so 6.1.0-56 > 6.1.0-9 and 6.12.117 > 6.12.99 (like ``sort -V``)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|\D+", text)]


def _candidates(spec: DebianKernel) -> list[str]:
    out = _run(["apt-cache", "search", "--names-only", "^linux-image-6\\."])
    names = [line.split(" - ", 1)[0].strip() for line in out.splitlines()]
    for pattern in spec.patterns:  # first pattern with any match wins (unsigned first)
        found = sorted((n for n in names if re.match(pattern, n)), key=_natural_key)
        if found:
            return found
    return []


def resolve_package(spec: DebianKernel) -> str:
    """Newest package matching the flavour; runs ``apt-get update`` only if lists lack it."""
    found = _candidates(spec)
    if not found:
        _run(["apt-get", "update"])
        found = _candidates(spec)
    if not found:
        raise RuntimeError(f"{spec.name}: no package matches {spec.patterns}")
    return found[-1]


def _download(package: str, dest: Path) -> Path:
    """``apt-get download`` into dest; retry once after ``apt-get update``."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    try:
        _run(["apt-get", "download", package], cwd=dest)
    except RuntimeError:
        _run(["apt-get", "update"])
        _run(["apt-get", "download", package], cwd=dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} left no .deb in {dest}")
    return debs[-1]


def _decompress_modules(moddir: Path) -> None:
    """xz -d every module (busybox insmod in virtme's initramfs cannot read .ko.xz)."""
    files = [str(p) for p in moddir.rglob("*.ko.xz")]
    for i in range(0, len(files), 500):
        _run(["xz", "-d", "-T0", "-f", *files[i : i + 500]])


def _stamp(name: str) -> Path:
    return cache_dir() / f"{name}.json"


def _load_stamp(name: str) -> Kernel | None:
    try:
        data = json.loads(_stamp(name).read_text())
    except (OSError, ValueError):
        return None
    kernel = Kernel(
        name=data["name"],
        vmlinuz=Path(data["vmlinuz"]),
        version=data.get("version"),
        package=data.get("package"),
    )
    moddir = kernel.vmlinuz.parent.parent / "lib/modules" / str(kernel.version)
    if kernel.vmlinuz.is_file() and (moddir / "modules.dep").is_file():
        return kernel
    return None


def fetch_debian(spec: DebianKernel) -> Kernel:
    """Download, unpack, decompress modules and depmod; cached by a JSON stamp."""
    cached = _load_stamp(spec.name)
    if cached is not None:
        return cached
    package = resolve_package(spec)
    deb = _download(package, cache_dir() / "debs")
    root = cache_dir() / "trees" / deb.stem
    if not root.exists():
        # Unpack into a temporary sibling and rename, so an interrupted run
        # never leaves a half tree that looks complete.
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root.parent))
        try:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)])
            for moddir in (tmp / "lib/modules").iterdir():
                _decompress_modules(moddir)
                _run(["depmod", "-b", str(tmp), moddir.name])
            tmp.rename(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise RuntimeError(f"{root}/boot: expected one vmlinuz, found {images}")
    version = images[0].name.removeprefix("vmlinuz-")
    kernel = Kernel(name=spec.name, vmlinuz=images[0], version=version, package=package)
    _stamp(spec.name).write_text(
        json.dumps({**asdict(kernel), "vmlinuz": str(kernel.vmlinuz)}, indent=1) + "\n"
    )
    return kernel


PATCHED = "patched-6.12"
BUILD_PATCHED = Path(__file__).resolve().parent.parent / "kernel-patch" / "build.sh"


def build_patched() -> Kernel:
    """kernel-patch/build.sh: a no-op printing the cached bzImage once it was built."""
    proc = subprocess.run(["bash", str(BUILD_PATCHED)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_PATCHED} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return Kernel(name=PATCHED, vmlinuz=Path(proc.stdout.strip().splitlines()[-1]))


def get(name: str) -> Kernel:
    """The kernel called ``name``: a custom one from the env, else a Debian one (fetched) or
    the patched one (built)."""
    custom = custom_kernel(name)
    if custom is not None:
        return custom
    if name in DEBIAN_KERNELS:
        return fetch_debian(DEBIAN_KERNELS[name])
    if name == PATCHED:
        return build_patched()
    raise KeyError(
        f"unknown kernel {name!r}: use one of {sorted(DEBIAN_KERNELS) + [PATCHED]} "
        f"or set {_env_name(name)}=/path/to/bzImage"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab.kernels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="download and prepare kernels (default: all Debian ones)")
    p_fetch.add_argument("names", nargs="*")
    p_path = sub.add_parser("path", help="print the kernel image path (fetches if needed)")
    p_path.add_argument("name")
    sub.add_parser("list", help="list known kernels")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            for name in args.names or list(DEBIAN_KERNELS):
                k = get(name)
                print(f"{k.name}\t{k.version or '?'}\t{k.vmlinuz}")
        elif args.cmd == "path":
            print(get(args.name).vmlinuz)
        else:
            for spec in DEBIAN_KERNELS.values():
                print(f"{spec.name}\t{spec.notes}")
            for key in sorted(os.environ):
                if key.startswith(ENV_KERNEL_PREFIX):
                    print(f"{key.removeprefix(ENV_KERNEL_PREFIX).lower()}\t{os.environ[key]}")
    except (KeyError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
