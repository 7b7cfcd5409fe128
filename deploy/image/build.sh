#!/usr/bin/env bash
# Build the pageheat OCI image from Debian packages and PyPI only (no registry pull):
#   1. a minimal Debian 12 root file system (mmdebstrap: the Essential packages + python3 +
#      libbpf1), cached by its package list for a week;
#   2. a wheelhouse for the image's CPython 3.11 built on this host (pageheat's wheel with its
#      BPF objects + its dependencies from PyPI), installed offline into /opt/pageheat, a venv
#      in the root file system, by pip run from its own wheel (no pip is left in the image);
#   3. committed with buildah as localhost/pageheat:VERSION and saved as an OCI archive.
# No compiler, no tests, no apt lists, docs or man pages end up in the image.
#
# Usage (root, Debian 12; apt-get install mmdebstrap buildah):
#   bash deploy/image/build.sh [OUT_DIR]        # default OUT_DIR: build/image in the checkout
# Prints the tag, the archive path and the size. Environment:
#   PAGEHEAT_IMAGE_CACHE   cache folder (default /var/cache/pageheat-image)
#   PYTHON                 the host python with pip that builds the wheels (default python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build/image}
cache=${PAGEHEAT_IMAGE_CACHE:-/var/cache/pageheat-image}
py=${PYTHON:-python3}
version=$("$py" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$root/pyproject.toml")
tag=localhost/pageheat:$version
# The commit the image is built from: its label, and what its pageheat_build_info must say.
rev=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
archive=$out/pageheat-$version.oci.tar
start=$(date +%s)

for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing: apt-get install $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (mmdebstrap, chroot, buildah)" >&2; exit 1; }
mkdir -p "$out" "$cache"
work=$(mktemp -d /var/tmp/pageheat-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- 1. the Debian root file system (cached) ---------------------------------------------------
# python3: the interpreter and its standard library (ssl for TLS, ctypes for libbpf);
# libbpf1: the system libbpf that pageheat loads (libbpf.so.1); libstdc++6: numpy's wheels link
# it (manylinux leaves it to the system). Nothing else beyond Essential. The merged-usr hook makes
# /usr merged by symlinks and installs usr-is-merged first: otherwise apt satisfies
# init-system-helpers' "usrmerge | usr-is-merged" with usrmerge, which pulls in perl (47 MB).
packages=python3,libbpf1,libstdc++6
mirrors=("deb http://deb.debian.org/debian bookworm main"
         "deb http://deb.debian.org/debian bookworm-updates main"
         "deb http://deb.debian.org/debian-security bookworm-security main")
debstrap=(mmdebstrap --quiet --variant=essential --include="$packages"
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # Documentation, man pages and translations are never installed; copyright files stay.
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/log/*'
  bookworm)
key=$(printf '%s\n' "${debstrap[@]}" "${mirrors[@]}" | sha256sum | cut -c1-16)
base=$cache/rootfs-$key.tar
# A week old at most, so that security updates arrive without anyone remembering to clear it.
if [ -s "$base" ] && [ -z "$(find "$base" -mmin +10080)" ]; then
  echo "rootfs: cached $base"
else
  t=$(date +%s)
  # mmdebstrap's hooks talk even with --quiet: the log is shown only when it fails.
  if ! "${debstrap[@]}" "$work/rootfs.tar" "${mirrors[@]}" >"$work/mmdebstrap.log" 2>&1; then
    cat "$work/mmdebstrap.log" >&2
    exit 1
  fi
  mv "$work/rootfs.tar" "$base"
  echo "rootfs: built $base in $(( $(date +%s) - t )) s"
fi

# --- 2. the wheelhouse, installed into /opt/pageheat -------------------------------------------
wh=$work/wheels
"$py" -m pip wheel --quiet --no-deps -w "$wh" "$root"   # the BPF objects: setup.py's build hook
whl=$(ls "$wh"/pageheat-*.whl)
# Binary wheels for the image's interpreter (Debian 12: CPython 3.11, glibc 2.36), whatever the
# host runs; pip is fetched as a wheel too and run from it inside the root file system.
"$py" -m pip download --quiet --dest "$wh" --only-binary=:all: --implementation cp \
  --python-version 3.11 --abi cp311 --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform linux_x86_64 \
  "$whl" pip
rootfs=$work/rootfs
mkdir "$rootfs"
tar -C "$rootfs" -xf "$base"
mkdir "$rootfs/tmp/wheels"
cp "$wh"/*.whl "$rootfs/tmp/wheels/"
pipwhl=$(cd "$rootfs/tmp/wheels" && ls pip-*.whl)
# The host's PIP_* settings (indexes, find-links) mean nothing inside: a clean environment.
inroot=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 chroot "$rootfs")
"${inroot[@]}" /usr/bin/python3 -m venv --without-pip /opt/pageheat
"${inroot[@]}" /opt/pageheat/bin/python "/tmp/wheels/$pipwhl/pip" install --quiet --no-index \
  --no-cache-dir --disable-pip-version-check --find-links /tmp/wheels "pageheat==$version"
rm -rf "$rootfs/tmp/wheels" "$rootfs/root/.cache"
# No test suites of the dependencies (numpy's alone is ~30 MB).
find "$rootfs/opt/pageheat/lib" -type d \( -name tests -o -name testing \) -path '*/numpy/*' -prune \
  -exec rm -rf {} +
ln -s /opt/pageheat/bin/pageheat "$rootfs/usr/local/bin/pageheat"
# Smoke test in the chroot: the package imports, finds its BPF objects (no kernel needed) and
# knows the commit it was built from (setup.py's build hook writes pageheat/REVISION).
smoke=$("${inroot[@]}" /opt/pageheat/bin/python -c \
  'from pageheat.sources.objects import object_path; from pageheat.buildinfo import revision
print("bpf objects:", object_path("ptwalk")); print("revision:", revision())')
echo "$smoke"
got=${smoke##*revision: }
[ "$got" = "$rev" ] || { echo "build.sh: the image's pageheat says revision $got, the checkout is at $rev" >&2; exit 1; }

# --- 3. commit and save --------------------------------------------------------------------------
ctr=$(buildah from --quiet scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mnt=$(buildah mount "$ctr")
tar -C "$rootfs" -cf - . | tar -C "$mnt" -xf -
buildah umount "$ctr" >/dev/null
buildah config \
  --entrypoint '["/opt/pageheat/bin/pageheat"]' --cmd serve \
  --env PATH=/opt/pageheat/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env PYTHONDONTWRITEBYTECODE=1 \
  --port 9476/tcp --user 0:0 --workingdir / \
  --label org.opencontainers.image.title=pageheat \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.licenses=GPL-2.0-only \
  --label org.opencontainers.image.revision="$rev" \
  "$ctr"
old=$(buildah images --quiet --noheading "$tag" 2>/dev/null || true)
buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
# The previous build under this tag is now nameless: remove it unless a container uses it.
if [ -n "$old" ] && [ "$old" != "$(buildah images --quiet --noheading "$tag")" ]; then
  buildah rmi "$old" >/dev/null 2>&1 || true
fi
trap 'rm -rf "$work"' EXIT
rm -f "$archive"
buildah push --quiet "$tag" "oci-archive:$archive:$tag"
size=$(buildah inspect --type image --format '{{.FromImage}}' "$tag" >/dev/null 2>&1; du -sb "$rootfs" | cut -f1)
echo "image: $tag"
echo "archive: $archive ($(du -m "$archive" | cut -f1) MiB compressed layers)"
echo "size: $(( size / 1048576 )) MiB unpacked"
echo "built in $(( $(date +%s) - start )) s"
