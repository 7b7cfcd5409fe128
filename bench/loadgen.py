"""A memcached binary-protocol load generator with memtier_benchmark's key patterns.

memtier_benchmark is not packaged on this machine, so this reproduces the parts of it the
benchmarks need, with memtier's option names:

    --key-pattern SET:GET   P parallel sequential (the key range is split among all
                            connections, each walks its part in order), S sequential shared,
                            R uniform random, G Gaussian over [min, max] with median the middle
                            and stddev (max - min) / 6 (memtier's default), clipped to the range
    --ratio S:G             sets:gets, e.g. 1:0 (populate), 0:1 (read only), 1:10
    --pipeline N            outstanding requests per connection (a sliding window, like memtier)
    --data-size BYTES       value size
    --clients N             connections per process, --threads N processes (asyncio + uvloop)
    --test-time SECONDS     or --requests allkeys (P pattern: every key of the range once)

Keys are ``memtier-<n>`` as in memtier. It reports ops/s, hits and misses, p50/p99/p99.9
latency (send of a request to arrival of its response, in microseconds) and the generator's
own CPU use per process: a process at >= 90% of a core is flagged as the bottleneck, because
then the measured rate is the generator's, not memcached's.

    .venv/bin/python bench/loadgen.py --start-memcached --key-maximum 100000 \\
        --ratio 1:0 --key-pattern P:P --requests allkeys
    .venv/bin/python bench/loadgen.py --port 11311 --ratio 0:1 --key-pattern G:G --pipeline 8 --test-time 30

Also a library: ``start_memcached()``, ``run()`` and ``memcached_stats()`` are used by
``bench/seed_figure.py`` and ``bench/overhead.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import shutil
import socket
import struct
import subprocess
import sys
import time
from array import array
from dataclasses import asdict, dataclass

import numpy as np

try:
    import uvloop
except ImportError:  # pragma: no cover - optional speed-up
    uvloop = None

MAGIC_REQ, MAGIC_RES = 0x80, 0x81
OP_GET, OP_SET = 0x00, 0x01
HDR = struct.Struct(">BBHBBHIIQ")  # magic opcode keylen extlen datatype vbucket/status bodylen opaque cas
SET_EXTRAS = struct.Struct(">II")  # flags, expiry
BOTTLENECK_CPU = 0.90  # fraction of one core


@dataclass(frozen=True)
class LoadSpec:
    host: str = "127.0.0.1"
    port: int = 11211
    key_pattern: str = "R:R"
    key_minimum: int = 0
    key_maximum: int = 10_000_000
    key_prefix: str = "memtier-"
    ratio: str = "1:10"
    data_size: int = 32
    pipeline: int = 1
    clients: int = 4  # connections per process
    threads: int = 1  # processes
    test_time: float = 10.0
    requests: str | None = None  # None: run test_time; "allkeys": the P range once; N: per connection
    seed: int = 1


# ---- key patterns --------------------------------------------------------------------------


class Keys:
    """Key indices for one connection (one side of the pattern: set or get)."""

    def __init__(self, pattern: str, lo: int, hi: int, conn: int, nconns: int, seed: int):
        self.pattern, self.lo, self.hi = pattern, lo, hi
        self.rng = np.random.default_rng(seed * 1_000_003 + conn)
        self.batch: list[int] = []
        if pattern == "P":  # this connection's part of the range, walked in order
            n = hi - lo + 1
            self.start = lo + n * conn // nconns
            self.end = lo + n * (conn + 1) // nconns - 1
            self.next = self.start
        elif pattern == "S":
            self.next = lo
        elif pattern not in ("R", "G"):
            raise ValueError(f"unknown key pattern {pattern!r}")
        self.wrapped = False

    def take(self) -> int:
        p = self.pattern
        if p == "P" or p == "S":
            k = self.next
            end = self.end if p == "P" else self.hi
            if k >= end:
                self.next = self.start if p == "P" else self.lo
                self.wrapped = True
            else:
                self.next = k + 1
            return k
        if not self.batch:
            if p == "G":  # memtier: median the middle of the range, stddev range / 6
                mid = (self.lo + self.hi) / 2
                sd = (self.hi - self.lo) / 6
                x = np.rint(self.rng.normal(mid, sd, 65536))
                self.batch = np.clip(x, self.lo, self.hi).astype(np.int64).tolist()
            else:
                self.batch = self.rng.integers(self.lo, self.hi + 1, 65536).tolist()
            self.batch.reverse()
        return self.batch.pop()


def parse_ratio(text: str) -> tuple[int, int]:
    s, g = (int(x) for x in text.split(":"))
    if s < 0 or g < 0 or s + g == 0:
        raise ValueError(f"bad ratio {text!r}")
    return s, g


# ---- one connection ------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    def __init__(self, spec: LoadSpec, idx: int, nconns: int, deadline_ns: int, stats: dict):
        sp, gp = spec.key_pattern.split(":")
        self.set_keys = Keys(sp, spec.key_minimum, spec.key_maximum, idx, nconns, spec.seed)
        self.get_keys = Keys(gp, spec.key_minimum, spec.key_maximum, idx, nconns, spec.seed + 7)
        self.n_set, self.n_get = parse_ratio(spec.ratio)
        self.cycle = self.n_set + self.n_get
        self.i = 0
        self.prefix = spec.key_prefix.encode()
        self.value = (b"x" * spec.data_size)
        self.pipeline = spec.pipeline
        self.deadline_ns = deadline_ns
        self.limit: int | None = None
        if spec.requests == "allkeys":
            ks = self.set_keys if self.n_set else self.get_keys
            if ks.pattern != "P":
                raise ValueError("--requests allkeys needs the P pattern")
            self.limit = ks.end - ks.start + 1
        elif spec.requests:
            self.limit = int(spec.requests)
        self.issued = 0
        self.sent: collections.deque[int] = collections.deque()  # send time, ns; FIFO
        self.kinds: collections.deque[bool] = collections.deque()  # True: set
        self.buf = bytearray()
        self.stopping = False
        self.stats = stats
        self.lat = stats["lat"]
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def request(self) -> tuple[bytes, bool]:
        is_set = (self.i % self.cycle) < self.n_set
        self.i += 1
        k = (self.set_keys if is_set else self.get_keys).take()
        key = self.prefix + str(k).encode()
        if is_set:
            body = len(key) + 8 + len(self.value)
            return HDR.pack(MAGIC_REQ, OP_SET, len(key), 8, 0, 0, body, 0, 0) + \
                SET_EXTRAS.pack(0, 0) + key + self.value, True
        return HDR.pack(MAGIC_REQ, OP_GET, len(key), 0, 0, 0, len(key), 0, 0) + key, False

    def fill(self, now: int) -> None:
        if self.stopping:
            return
        n = self.pipeline - len(self.sent)
        if self.limit is not None:
            n = min(n, self.limit - self.issued)
        if n <= 0:
            if not self.sent:
                self.finish()
            return
        parts = []
        for _ in range(n):
            req, is_set = self.request()
            parts.append(req)
            self.sent.append(now)
            self.kinds.append(is_set)
        self.issued += n
        self.transport.write(b"".join(parts))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fill(time.perf_counter_ns())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.perf_counter_ns()
        off, n = 0, len(buf)
        st = self.stats
        lat = self.lat
        while n - off >= 24:
            magic, op, _kl, _el, _dt, status, body, _o, _c = HDR.unpack_from(buf, off)
            if n - off < 24 + body:
                break
            if magic != MAGIC_RES:
                raise RuntimeError(f"bad response magic {magic:#x}")
            off += 24 + body
            t0 = self.sent.popleft()
            is_set = self.kinds.popleft()
            lat.append((now - t0) // 1000)
            if is_set:
                st["sets"] += 1
                if status != 0:
                    st["errors"] += 1
            else:
                st["gets"] += 1
                if status == 0:
                    st["hits"] += 1
                elif status == 1:
                    st["misses"] += 1
                else:
                    st["errors"] += 1
        if off:
            del buf[:off]
        if now >= self.deadline_ns:
            self.stopping = True
        if self.stopping and not self.sent:
            self.finish()
        else:
            self.fill(now)

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("memcached closed the connection"))


async def _run_process(spec: LoadSpec, proc: int) -> dict:
    loop = asyncio.get_running_loop()
    stats = {"sets": 0, "gets": 0, "hits": 0, "misses": 0, "errors": 0, "lat": array("l")}
    nconns = spec.clients * spec.threads
    deadline = time.perf_counter_ns() + int(spec.test_time * 1e9) if not spec.requests else 2**62
    conns = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for c in range(spec.clients):
        idx = proc * spec.clients + c
        _, p = await loop.create_connection(
            lambda idx=idx: Conn(spec, idx, nconns, deadline, stats), spec.host, spec.port)
        conns.append(p)
    await asyncio.gather(*(p.done for p in conns))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stats["wall"], stats["cpu"] = wall, cpu
    return stats


def _process_main(spec: LoadSpec, proc: int, out) -> None:
    if uvloop is not None:
        uvloop.install()
    st = asyncio.run(_run_process(spec, proc))
    lat = np.frombuffer(st.pop("lat"), dtype=np.int64)
    out.send((st, lat.tobytes()))
    out.close()


@dataclass
class Result:
    ops: int
    sets: int
    gets: int
    hits: int
    misses: int
    errors: int
    seconds: float
    ops_per_sec: float
    p50_us: float
    p99_us: float
    p999_us: float
    gen_cpu_per_process: list[float]  # fraction of one core, each generator process
    gen_bottleneck: bool

    def line(self) -> str:
        flag = "  GENERATOR-BOUND" if self.gen_bottleneck else ""
        cpu = ",".join(f"{c:.0%}" for c in self.gen_cpu_per_process)
        return (f"{self.ops} ops in {self.seconds:.1f}s: {self.ops_per_sec:,.0f} ops/s "
                f"(sets {self.sets}, gets {self.gets}, hits {self.hits}, misses {self.misses}, "
                f"errors {self.errors}); latency p50 {self.p50_us:.0f} us, p99 {self.p99_us:.0f} us, "
                f"p99.9 {self.p999_us:.0f} us; generator CPU {cpu} of a core{flag}")


def run(spec: LoadSpec) -> Result:
    """Run the load in spec.threads processes; aggregate."""
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for p in range(spec.threads):
        r, w = ctx.Pipe(duplex=False)
        pr = ctx.Process(target=_process_main, args=(spec, p, w), daemon=True)
        pr.start()
        w.close()
        pipes.append(r)
        procs.append(pr)
    results = []
    for r, pr in zip(pipes, procs, strict=True):
        try:
            results.append(r.recv())
        except EOFError:
            raise RuntimeError(f"load generator process {pr.pid} failed") from None
        pr.join()
    tot = {k: sum(st[k] for st, _ in results) for k in ("sets", "gets", "hits", "misses", "errors")}
    lat = np.concatenate([np.frombuffer(b, dtype=np.int64) for _, b in results])
    wall = max(st["wall"] for st, _ in results)
    cpu = [st["cpu"] / st["wall"] for st, _ in results]
    ops = tot["sets"] + tot["gets"]
    q = np.percentile(lat, [50, 99, 99.9]) if len(lat) else [float("nan")] * 3
    return Result(ops=ops, **tot, seconds=wall, ops_per_sec=ops / wall, p50_us=float(q[0]),
                  p99_us=float(q[1]), p999_us=float(q[2]), gen_cpu_per_process=cpu,
                  gen_bottleneck=any(c >= BOTTLENECK_CPU for c in cpu))


# ---- memcached -----------------------------------------------------------------------------


def memory_mb(keys: int, data_size: int, key_len: int = 16) -> int:
    """-m for `keys` items: value + key + ~56 bytes of item header, rounded up to a slab chunk
    (growth factor 1.25 wastes up to 25%), plus 64 MiB of slack."""
    item = data_size + key_len + 56
    return int(keys * item * 1.25 / (1 << 20)) + 64


def _no_thp() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(41, 1, 0, 0, 0) != 0:  # PR_SET_THP_DISABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE)")


def start_memcached(port: int, memory: int, threads: int = 2, cpus: str | None = None,
                    extra: list[str] = (), thp: bool = False) -> subprocess.Popen:
    """memcached on 127.0.0.1:port. thp=False starts it with prctl(PR_SET_THP_DISABLE) (inherited
    across exec): ``-L`` madvises the item cache MADV_HUGEPAGE, and a 2 MiB page has one
    Accessed bit, which would blur a per-page heatmap."""
    exe = shutil.which("memcached") or "/usr/bin/memcached"
    cmd = [exe, "-u", "nobody", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(memory),
           "-t", str(threads), "-c", "1024", *extra]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    mc = subprocess.Popen(cmd, preexec_fn=None if thp else _no_thp)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return mc
        except OSError:
            if mc.poll() is not None:
                raise RuntimeError(f"memcached exited with {mc.returncode}") from None
            time.sleep(0.05)
    mc.kill()
    raise RuntimeError("memcached did not start listening")


def memcached_stats(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def main(argv: list[str] | None = None) -> int:
    d = LoadSpec()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--key-pattern", default=d.key_pattern)
    p.add_argument("--key-minimum", type=int, default=d.key_minimum)
    p.add_argument("--key-maximum", type=int, default=d.key_maximum)
    p.add_argument("--key-prefix", default=d.key_prefix)
    p.add_argument("--ratio", default=d.ratio)
    p.add_argument("--data-size", type=int, default=d.data_size)
    p.add_argument("--pipeline", type=int, default=d.pipeline)
    p.add_argument("--clients", type=int, default=d.clients, help="connections per process")
    p.add_argument("--threads", type=int, default=d.threads, help="generator processes")
    p.add_argument("--test-time", type=float, default=d.test_time)
    p.add_argument("--requests", help="'allkeys' (P pattern) or N per connection")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--start-memcached", action="store_true",
                   help="start memcached on 127.0.0.1:PORT with -m sized to the key range, stop it after")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    spec = LoadSpec(host=a.server, port=a.port, key_pattern=a.key_pattern, key_minimum=a.key_minimum,
                    key_maximum=a.key_maximum, key_prefix=a.key_prefix, ratio=a.ratio,
                    data_size=a.data_size, pipeline=a.pipeline, clients=a.clients, threads=a.threads,
                    test_time=a.test_time, requests=a.requests, seed=a.seed)
    mc = None
    if a.start_memcached:
        mb = memory_mb(a.key_maximum - a.key_minimum + 1, a.data_size)
        mc = start_memcached(a.port, mb)
        print(f"memcached pid {mc.pid} on 127.0.0.1:{a.port}, -m {mb}", file=sys.stderr)
    try:
        res = run(spec)
    finally:
        if mc:
            mc.terminate()
            mc.wait()
    print(json.dumps(asdict(res)) if a.json else res.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
