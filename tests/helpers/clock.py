"""A clock a test moves by hand, for the parts that take their clock as an argument."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
