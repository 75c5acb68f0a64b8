"""The edge side: run the head, encode the activation, upload it through a token bucket that
emulates the link's bandwidth (sleep-paced chunks on loopback), wait an emulated round trip,
and decode the cloud's reply (its download paced by the same bandwidth)."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .pacing import TokenBucket, mbps_to_bytes_per_s
from .wire import HEADER, WireError, decode, encode, parse_header


class ServerError(RuntimeError):
    """The cloud answered with an error; `status` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"server answered {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Link:
    """The emulated network: bandwidth in Mbit/s each way and the round-trip time in ms."""

    bandwidth_mbps: float
    rtt_ms: float = 0.0


def post_tensor(host: str, port: int, token: str, header: str, body: bytes, link: Link | None,
                timeout_s: float = 60.0) -> tuple[dict, Tensor]:
    """POST one encoded tensor to /v1/infer (paced when `link` is given); returns the reply's
    header and tensor, or raises ServerError with the server's message."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.putrequest("POST", "/v1/infer")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader(HEADER, header)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        bucket = TokenBucket(mbps_to_bytes_per_s(link.bandwidth_mbps)) if link else None
        try:
            for chunk in bucket.pace(body) if bucket else [body]:
                conn.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early (401/413): its answer is still there to read
        if link and link.rtt_ms:
            time.sleep(link.rtt_ms / 1e3)  # emulated propagation, both ways
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            try:
                message = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                message = payload[:200].decode(errors="replace")
            raise ServerError(response.status, message)
        if bucket:
            for _ in bucket.pace(payload):
                pass  # downlink: the reply takes its bytes' time on the emulated link
        reply_header = parse_header(response.getheader(HEADER))
        return reply_header, decode(reply_header, payload)
    except WireError as err:
        raise ServerError(502, f"malformed reply: {err}") from err
    finally:
        conn.close()


@dataclass
class EdgeClient:
    """Runs `head` here and the rest on the server's `split` tail; `slowdown` >= 1 stretches the
    head's measured time by sleeping, to emulate a slower edge device on this CPU."""

    head: nn.Module
    split: str
    precision: str
    host: str
    port: int
    token: str
    link: Link | None = None
    slowdown: float = 1.0

    @torch.no_grad()
    def infer(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(model output, {"head_ms", "tail_ms", "total_ms"}) for one request."""
        start = time.perf_counter()
        act = self.head(x)
        head_s = time.perf_counter() - start
        if self.slowdown > 1.0:
            time.sleep(head_s * (self.slowdown - 1.0))
        header, body = encode(act, self.precision, split=self.split)
        reply, out = post_tensor(self.host, self.port, self.token, header, body, self.link)
        total = (time.perf_counter() - start) * 1e3
        return out, {"head_ms": head_s * 1e3 * self.slowdown, "tail_ms": float(reply["tail_ms"]),
                     "total_ms": total}
