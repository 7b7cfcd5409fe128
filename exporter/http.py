"""A small asyncio HTTP/1.1 server for /metrics, /healthz and the JSON API."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .webconfig import WebConfig

log = logging.getLogger(__name__)
Handler = Callable[[], Awaitable[object]]
MAX_HEADER_BYTES = 16384
INDEX = b"""<html><head><title>pageheat</title></head><body><h1>pageheat</h1>
<p><a href="/metrics">Metrics</a> &middot; <a href="/healthz">Health</a></p></body></html>
"""


class HttpServer:
    def __init__(self, registry: CollectorRegistry, web: WebConfig,
                 api: dict[str, Handler] | None = None) -> None:
        self.registry = registry
        self.web = web
        self.api = api or {}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self.web.ssl_context)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            # Shutdown cancels requests in flight (one waiting for bcrypt, say). Python 3.11's
            # start_server calls task.exception() on the finished handler, which raises for a
            # cancelled task and logs a traceback; ending normally avoids that.
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            if len(head) > MAX_HEADER_BYTES:
                raise ValueError("headers too large")
            status, ctype, body = await self._respond(head.decode("latin-1"))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError, ValueError):
            writer.close()
            return
        extra = 'WWW-Authenticate: Basic realm="pageheat"\r\n' if status.startswith("401") else ""
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"{extra}Connection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, head: str) -> tuple[str, str, bytes]:
        lines = head.split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        # bcrypt is slow on purpose: check off the event loop, so scrapes and scheduling go on.
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.web.authorized, headers.get("authorization")):
            return "401 Unauthorized", "text/plain", b"unauthorized\n"
        if path == "/metrics":
            encoder, ctype = choose_encoder(headers.get("accept", ""))
            body = await loop.run_in_executor(None, encoder, self.registry)
            return "200 OK", ctype, body
        if path in self.api:
            data = await self.api[path]()
            return "200 OK", "application/json", json.dumps(data).encode()
        if path == "/":
            return "200 OK", "text/html", INDEX
        return "404 Not Found", "text/plain", b"not found\n"
