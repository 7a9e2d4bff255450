"""Sign-in throttling: failed sign-ins slow down guessing, per account and per address.

Each account name and each client address keeps its recent failures. The first
``free_failures`` within ``window_s`` cost nothing; each one after that locks the key for a
delay that doubles from ``base_delay_s`` up to ``max_delay_s``. While any key of a request
is locked the app answers 429 with Retry-After, before the password is even hashed (Argon2
is deliberately expensive: a flood of guesses must not become a flood of hashing).

Per account, so that guessing one inspector's password from many addresses is slow; per
address, with a higher allowance because a plant's inspectors may share one address behind
NAT, so that one address spraying many names is slow. A success clears its account's
failures, not its address's (one known password must not reset the guessing of others).
In memory, per app process: a restart forgets, which only ever helps the rightful user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 100_000  # bounds the memory a spray of names or addresses can take


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


@dataclass(frozen=True)
class Limits:
    free_failures: int
    base_delay_s: float = 1.0
    max_delay_s: float = 900.0
    window_s: float = 900.0  # failures older than this (since the last one) are forgotten


ACCOUNT_LIMITS = Limits(free_failures=5)
ADDRESS_LIMITS = Limits(free_failures=20)


class SignInThrottle:
    def __init__(
        self,
        account: Limits = ACCOUNT_LIMITS,
        address: Limits = ADDRESS_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"account": account, "address": address}
        self.clock = clock
        self._records: dict[tuple[str, str], _Record] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(name: str, address: str) -> list[tuple[str, str]]:
        return [("account", name.casefold()[:200]), ("address", address)]

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until this name may be tried from this address (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [
                record.locked_until - now
                for key in self._keys(name, address)
                if (record := self._records.get(key)) is not None
            ]
        return max([0.0, *waits])

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._records) >= MAX_KEYS:
                self._forget_old(now)
            for kind, value in self._keys(name, address):
                limits = self.limits[kind]
                record = self._records.setdefault((kind, value), _Record())
                if now - record.last > limits.window_s:
                    record.failures = 0
                record.failures += 1
                record.last = now
                over = record.failures - limits.free_failures
                if over >= 0:
                    delay = min(limits.base_delay_s * 2.0**over, limits.max_delay_s)
                    record.locked_until = now + delay

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._records.pop(self._keys(name, "")[0], None)

    def _forget_old(self, now: float) -> None:
        """Drop records past their window; if a spray still fills the table, the oldest."""
        window = max(limit.window_s for limit in self.limits.values())
        for key in [k for k, r in self._records.items() if now - r.last > window]:
            del self._records[key]
        if len(self._records) >= MAX_KEYS:
            oldest = sorted(self._records, key=lambda k: self._records[k].last)
            for key in oldest[: len(oldest) // 2]:
                del self._records[key]
