"""Token bucket pacing math with a fake clock (no real time, no thresholds)."""

import pytest

from sparseforge.edge.pacing import TokenBucket, mbps_to_bytes_per_s


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_upload_takes_bytes_over_rate_in_sleeps():
    clock = FakeClock()
    bucket = TokenBucket(1000.0, burst_bytes=100, clock=clock)
    chunks = list(bucket.pace(b"x" * 1050, sleep=clock.sleep))
    assert [len(c) for c in chunks] == [100] * 10 + [50]
    assert clock.now == pytest.approx(1.05)  # 1050 bytes at 1000 B/s


def test_idle_time_refills_up_to_the_burst_only():
    clock = FakeClock()
    bucket = TokenBucket(1000.0, burst_bytes=100, clock=clock)
    clock.now = 10.0  # long idle: only `burst` tokens saved
    assert bucket.wait(100) == 0.0
    assert bucket.wait(50) == pytest.approx(0.05)
    clock.now += 0.05
    assert bucket.wait(0) == 0.0


def test_units_and_errors():
    assert mbps_to_bytes_per_s(8.0) == 1e6
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        TokenBucket(0.0)
