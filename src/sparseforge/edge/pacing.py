"""A token bucket that emulates a link's bandwidth on loopback: bytes may leave only as fast
as tokens (bytes) accrue at `rate` per second, with at most `burst` saved up. The clock and
the sleep are injectable so the schedule is testable without real time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator


class TokenBucket:
    """Stateful pacer: `wait(n)` says how long to sleep before `n` bytes may go, and books them."""

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int = 16384,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"bandwidth must be positive, got {rate_bytes_per_s} bytes/s")
        if burst_bytes < 1:
            raise ValueError(f"burst must be at least 1 byte, got {burst_bytes}")
        self.rate, self.burst, self.clock = float(rate_bytes_per_s), int(burst_bytes), clock
        self.tokens = 0.0  # start empty: the first chunk pays for itself (no free burst)
        self.stamp = clock()

    def wait(self, n: int) -> float:
        """Seconds to sleep before sending `n` bytes (> burst is fine: it just waits longer);
        the tokens are taken now, so a caller must sleep that long and then send."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def pace(self, data: bytes, chunk: int | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Iterator[bytes]:
        """Yield `data` in chunks (default: the burst size), each after its sleep."""
        chunk = chunk or self.burst
        for start in range(0, len(data), chunk):
            piece = data[start:start + chunk]
            delay = self.wait(len(piece))
            if delay > 0:
                sleep(delay)
            yield piece


def mbps_to_bytes_per_s(mbps: float) -> float:
    """Megabits per second (10^6 bits) to bytes per second."""
    return mbps * 1e6 / 8
