"""The map-element calls of pageheat.kernel.libbpf (update, delete, batch drain) on real BPF
hash maps: those of mglru_fexit.bpf.o, loaded with no program so that a kernel without fexit
or MGLRU still creates its maps. The mglru sources use exactly these calls on these maps."""

from __future__ import annotations

import ctypes as C
import errno
import os

import numpy as np
import pytest
from conftest import need_kernel
from pageheat.kernel.libbpf import BpfObject, LibbpfError, map_delete, map_lookup_and_delete_batch, map_update
from pageheat.sources.mglru import _KEY
from pageheat.sources.mglru_fexit import HOOKS
from pageheat.sources.objects import object_path


@pytest.fixture
def maps() -> BpfObject:
    if os.geteuid() != 0:
        need_kernel("not root")
    try:
        obj = BpfObject(object_path("mglru_fexit"), max_entries={"young": 4096},
                        autoload={prog: False for prog, _, _ in HOOKS})
    except LibbpfError as e:
        need_kernel(f"cannot create BPF hash maps: {e.strerror}")
    yield obj
    obj.close()


def drain(fd: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Every entry of the hash at ``fd``, in batches of ``batch``, the way mglru drains it."""
    keys, values = np.zeros(batch, _KEY), np.zeros(batch, np.uint32)
    token_in, token_out = C.c_uint64(0), C.c_uint64(0)
    got_k, got_v, first = [], [], True
    while True:
        n, done = map_lookup_and_delete_batch(fd, None if first else token_in, token_out,
                                              keys.ctypes.data, values.ctypes.data, batch)
        got_k.append(keys[:n].copy())
        got_v.append(values[:n].copy())
        if done:
            return np.concatenate(got_k), np.concatenate(got_v)
        token_in.value = token_out.value
        first = False


def test_update_delete(maps: BpfObject) -> None:
    fd = maps.map_fd("targets")
    map_update(fd, C.c_uint32(41), C.c_uint32(1))
    map_update(fd, C.c_uint32(41), C.c_uint32(1))  # an update of a present key is fine
    assert map_delete(fd, C.c_uint32(41))
    assert not map_delete(fd, C.c_uint32(41))  # already gone: False, no exception


def test_update_failure_raises_with_errno(maps: BpfObject) -> None:
    fd = maps.map_fd("targets")
    map_update(fd, C.c_uint32(1), C.c_uint32(1), flags=1)  # BPF_NOEXIST on a new key: fine
    with pytest.raises(LibbpfError) as e:
        map_update(fd, C.c_uint32(1), C.c_uint32(1), flags=1)  # ... on a present one: EEXIST
    assert e.value.errno == errno.EEXIST


@pytest.mark.parametrize("batch", [7, 64, 1000])
def test_batch_drain_moves_every_entry_once(maps: BpfObject, batch: int) -> None:
    fd = maps.map_fd("young")
    rng = np.random.default_rng(batch)
    want = {(int(t), int(v)): int(f) for t, v, f in zip(
        rng.integers(1, 5, 500), rng.choice(1 << 30, 500, replace=False), rng.integers(1, 4, 500),
        strict=True)}
    key = np.zeros(1, _KEY)
    for (tgid, vpn), flags in want.items():
        key["tgid"], key["vpn"] = tgid, vpn
        map_update(fd, C.c_char.from_buffer(key), C.c_uint32(flags))
    k, v = drain(fd, batch)
    got = {(int(t), int(p)): int(f) for t, p, f in zip(k["tgid"], k["vpn"], v, strict=True)}
    assert len(k) == len(want) and got == want
    k, v = drain(fd, batch)  # lookup-and-delete: nothing left
    assert len(k) == 0 and len(v) == 0
