"""A real pageheat HttpServer on 127.0.0.1, on its own event-loop thread, serving the real
collector over views made by the real aggregator from synthetic harvests; and a raw-socket
client, for requests no HTTP library would send."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pageheat.config import Config
from pageheat.model.aggregate import TargetState, TargetView
from pageheat.serve.collector import PageheatCollector
from pageheat.serve.http import Handler, HttpServer
from pageheat.serve.stats import Stats
from pageheat.serve.webconfig import WebConfig
from pageheat.sources.base import Harvest, Pages, VmaKind, Vmas
from prometheus_client import CollectorRegistry


def synthetic_view(pid: int, pages: int = 4096, n_bins: int = 32, seed: int = 0,
                   nodes: int = 1) -> TargetView:
    """The view the aggregator makes of one synthetic harvest: ``pages`` resident pages over
    four mappings, a random half accessed, anon and file pages on ``nodes`` NUMA nodes."""
    rng = np.random.default_rng(seed)
    base = 0x7F0000000
    size = pages // 4
    starts = np.array([base + i * (size + 16) for i in range(4)], dtype=np.uint64)
    vmas = Vmas(start=starts << np.uint64(12), end=(starts + np.uint64(size)) << np.uint64(12),
                kind=np.array([VmaKind.ANON, VmaKind.FILE, VmaKind.HEAP, VmaKind.ANON], dtype=np.uint8),
                accessible=np.ones(4, dtype=bool), names=["", "/usr/lib/libc.so.6", "[heap]", ""])
    vpn = np.concatenate([s + np.arange(size, dtype=np.uint64) for s in starts])
    vma = np.repeat(np.arange(4, dtype=np.int32), size)
    p = Pages(vpn=vpn, accessed=rng.random(len(vpn)) < 0.5,
              node=rng.integers(0, nodes, len(vpn)).astype(np.int16),
              type=(vma == 1).astype(np.uint8), thp=np.zeros(len(vpn), dtype=bool), vma=vma)
    state = TargetState(pid, f"synth{pid}", n_bins, 120.0)
    return state.update(Harvest(pid, 100.0, p, vmas, 0.001, 0.001), 1.0)


@dataclass
class Served:
    """A running server: its views and generation can be changed by the test."""

    server: HttpServer
    loop: asyncio.AbstractEventLoop
    views: dict[int, TargetView]
    generation: int = 0
    addresses: list[tuple[str, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def bump(self, views: dict[int, TargetView] | None = None) -> None:
        if views is not None:
            self.views = views
        self.generation += 1


def serve(views: dict[int, TargetView], *, web: WebConfig | None = None, cached: bool = True,
          metrics_path: str = "/metrics", addresses: list[tuple[str, int]] | None = None,
          api: dict[str, Handler] | None = None, live: CollectorRegistry | None = None,
          cfg: Config | None = None, max_connections: int | None = None):
    """Context manager: start the server on a loop thread, yield Served, stop it."""
    import contextlib

    @contextlib.contextmanager
    def run():
        cfg_ = cfg or Config(max_series=1_000_000)
        s = Served(None, None, views)  # type: ignore[arg-type]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PageheatCollector(cfg_, lambda: s.views, Stats(), "synthetic"))
        s.server = HttpServer(registry, web or WebConfig(), api, metrics_path,
                              generation=(lambda: s.generation) if cached else None, live=live,
                              max_connections=max_connections)
        loop = asyncio.new_event_loop()
        s.loop = loop
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        s.addresses = addresses or [("127.0.0.1", 0)]
        asyncio.run_coroutine_threadsafe(s.server.start(s.addresses), loop).result(10)
        try:
            yield s
        finally:
            asyncio.run_coroutine_threadsafe(s.server.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    return run()


def raw(port: int, data: bytes, timeout: float = 10.0, host: str = "127.0.0.1",
        wrap: Callable[[socket.socket], socket.socket] | None = None) -> bytes:
    """Send bytes, half-close, read until the server closes; the whole answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        s = wrap(sock) if wrap else sock
        try:
            s.sendall(data)
            if not wrap:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all: read the answer
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body
