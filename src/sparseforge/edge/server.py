"""The cloud side: an aiohttp server hosting the tails of a split model. POST /v1/infer takes one
activation (wire.py format), runs the tail and returns the output; GET /v1/splits lists what it
hosts. A shared-secret bearer token, a request size limit, and 400s that name the problem for
bad tensors; every error leaves the server serving."""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from aiohttp import web
from torch import nn

from .wire import HEADER, WireError, decode, encode, parse_header

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BYTES = 64 * 2**20
Tails = dict[str, tuple[nn.Module, tuple[int, ...]]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _authorized(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def make_app(tails: Tails, token: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
             threads: int | None = None, device: str = "cpu") -> web.Application:
    """The application serving `tails` ({split: (tail, per-sample input shape)}) on `device`;
    the tails run one at a time in a worker thread so the event loop keeps answering."""
    if not token:
        raise ValueError("the server needs a non-empty shared-secret token")
    if threads:
        torch.set_num_threads(threads)
    tails = {name: (tail.to(device).eval(), shape) for name, (tail, shape) in tails.items()}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparseforge-tail",
                              initializer=torch.set_num_threads if threads else None,
                              initargs=(threads,) if threads else ())

    def run_tail(name: str, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = tails[name][0](x.to(device)).float().cpu()
        return out, (time.perf_counter() - start) * 1e3

    async def splits(request: web.Request) -> web.Response:
        if not _authorized(request, token):
            return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        return web.json_response({n: list(shape) for n, (_, shape) in tails.items()})

    async def infer(request: web.Request) -> web.Response:
        if not _authorized(request, token):
            return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        if request.content_length is not None and request.content_length > max_bytes:
            return _error(413, f"request of {request.content_length} bytes exceeds the "
                          f"server's limit of {max_bytes}; send a smaller batch")
        try:
            header = parse_header(request.headers.get(HEADER))
            name = header.get("split")
            if name not in tails:
                raise WireError(f"split {name!r} is not served here; served: {sorted(tails)}")
            body = await request.read()
            x = decode(header, body, tails[name][1])
        except WireError as err:
            return _error(400, str(err))
        out, tail_ms = await asyncio.get_running_loop().run_in_executor(pool, run_tail, name, x)
        reply_header, reply = encode(out, "fp32", tail_ms=tail_ms)
        return web.Response(body=reply, headers={HEADER: reply_header},
                            content_type="application/octet-stream")

    async def close_pool(app: web.Application) -> None:
        pool.shutdown(wait=True)

    app = web.Application(client_max_size=max_bytes)
    app.router.add_get("/v1/splits", splits)
    app.router.add_post("/v1/infer", infer)
    app.on_cleanup.append(close_pool)
    return app


class ServerThread:
    """Runs an app on host:port (0 = a free port) in a background thread; `stop()` shuts it
    down. For tests and the benchmark: `with ServerThread(app) as server: server.port`."""

    def __init__(self, app: web.Application, host: str = DEFAULT_HOST, port: int = 0,
                 start_timeout_s: float = 30.0) -> None:
        self.app, self.host, self.port = app, host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="sparseforge-serve")
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            raise TimeoutError(f"server did not start within {start_timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"server failed to start: {self._error}") from self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app)
        try:
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
        except BaseException as err:  # reported to the constructor's caller
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_token(path: str | Path) -> str:
    """The shared secret from a file (surrounding whitespace dropped); it must not be empty."""
    token = Path(path).read_text().strip()
    if len(token) < 16:
        raise ValueError(f"token file {path} holds {len(token)} characters; use at least 16, "
                         "e.g. `python -c 'import secrets; print(secrets.token_urlsafe())' > F`")
    return token


def serve(app: web.Application, host: str = DEFAULT_HOST, port: int = 8080) -> None:
    """Serve until interrupted (the `sparseforge serve` loop)."""
    web.run_app(app, host=host, port=port, print=lambda msg: print(msg, flush=True))
