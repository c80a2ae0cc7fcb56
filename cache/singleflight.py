"""One fetch per digest at a time, retried with jittered backoff, then cooled down.

:class:`FetchCoordinator` is the part of the store that talks to origins on
behalf of many waiters:

- **Singleflight**: every caller of :meth:`FetchCoordinator.fetch` for a
  digest already in flight waits for that flight instead of starting one.
  Flights run in a nursery the owner provides, so a waiter that gives up
  (its own deadline) does not cancel the fetch for the others.
- **Retries**: :class:`TransientFetchError` and :class:`CorruptImage` (a bad
  copy may come from a bad proxy) are retried up to ``attempts`` times with
  "equal jitter" exponential backoff; anything else fails at once.
- **Cool-down**: after a failed flight the digest is refused for a jittered,
  growing delay, so a crowd of requests for a missing image does not turn
  into a crowd of requests at the origin.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from cache.errors import CacheError, CorruptImage, FetchError, TransientFetchError
from cache.origin import Origin

log = logging.getLogger("huselet.cache")

_MAX_REMEMBERED_FAILURES = 1024  # bound on the cool-down table
_MAX_ROUNDS = 3  # joins of other origins' failed flights before a fetch gives up

Install = Callable[[str, Origin], Awaitable[None]]


class _Flight:
    __slots__ = ("done", "error", "origin")

    def __init__(self, origin: str) -> None:
        self.done = trio.Event()
        self.error: CacheError | None = None
        self.origin = origin  # the key of the origin it fetches from


def _origin_key(origin: Origin) -> str:
    return repr(origin)  # type and location: two objects for one place are one origin


@dataclass(frozen=True, slots=True)
class _Failure:
    count: int
    retry_at: float
    error: CacheError


class FetchCoordinator:
    """Runs ``install(digest, origin)`` at most once at a time per digest."""

    def __init__(
        self,
        install: Install,
        *,
        attempts: int,
        attempt_timeout: float,
        backoff_base: float,
        backoff_max: float,
        rng: random.Random,
    ) -> None:
        self._install = install
        self._attempts = max(1, attempts)
        self._attempt_timeout = attempt_timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._random = rng
        self._flights: dict[str, _Flight] = {}
        # By (digest, origin): one origin's failure says nothing about another's
        # copy (a published file must install while the function's origin is down).
        self._failures: OrderedDict[tuple[str, str], _Failure] = OrderedDict()
        self.nursery: trio.Nursery | None = None  # set by the owner while it runs
        self.attempts_made = 0
        self.failed_flights = 0
        self.coalesced = 0

    async def fetch(self, digest: str, origin: Origin) -> None:
        """Return once an install of ``digest`` succeeded; raise its error otherwise.

        A caller joins a flight already under way for the digest; if that one
        fails and came from another origin, the caller tries its own origin
        (at most a few rounds: each ends in a result, or in its own failure).
        """
        key = _origin_key(origin)
        error: CacheError = FetchError(f"fetch of image {digest} gave up")
        for _ in range(_MAX_ROUNDS):
            flight = self._flights.get(digest)
            if flight is None:
                failure = self._failures.get((digest, key))
                now = trio.current_time()
                if failure is not None and now < failure.retry_at:
                    wait = failure.retry_at - now
                    raise copy_error(failure.error, f" (not retrying for {wait:.1f}s)")
                if self.nursery is None:
                    raise RuntimeError("ImageStore.run() is not running")
                flight = _Flight(key)
                try:
                    self.nursery.start_soon(self._fly, digest, origin, flight)
                except RuntimeError:
                    # The store's nursery is closing (shutdown) but our caller has
                    # not reached a checkpoint to notice its cancellation yet.
                    raise FetchError(f"fetch of image {digest} refused: store stopping") from None
                self._flights[digest] = flight
            else:
                self.coalesced += 1
            await flight.done.wait()
            if flight.error is None:
                return
            error = flight.error
            if flight.origin == key:
                break
        raise copy_error(error)

    async def _fly(self, digest: str, origin: Origin, flight: _Flight) -> None:
        try:
            await self._with_retries(digest, origin)
            self._failures.pop((digest, flight.origin), None)
        except CacheError as exc:
            flight.error = exc
            self._remember_failure((digest, flight.origin), exc)
        except trio.Cancelled:
            flight.error = FetchError(f"fetch of image {digest} cancelled: the store is stopping")
            raise
        except Exception as exc:
            # An origin is a plug-in; its bug must fail this fetch, not the store.
            log.exception("fetch of image %s from %r failed unexpectedly", digest, origin)
            flight.error = FetchError(f"fetch of image {digest} from {origin!r} failed: {exc!r}")
            self._remember_failure((digest, flight.origin), flight.error)
        finally:
            del self._flights[digest]
            flight.done.set()

    async def _with_retries(self, digest: str, origin: Origin) -> None:
        for attempt in range(1, self._attempts + 1):
            self.attempts_made += 1
            error: CacheError
            try:
                with trio.fail_after(self._attempt_timeout):
                    await self._install(digest, origin)
                return
            except trio.TooSlowError:
                error = TransientFetchError(
                    f"fetch of image {digest} from {origin.describe()} took over "
                    f"{self._attempt_timeout}s"
                )
            except (TransientFetchError, CorruptImage) as exc:
                error = exc
            if attempt == self._attempts:
                raise copy_error(error, f" (gave up after {attempt} attempts)") from error
            log.info("fetch of image %s failed (attempt %d): %s", digest, attempt, error)
            await trio.sleep(self.backoff(attempt))

    def _remember_failure(self, key: tuple[str, str], error: CacheError) -> None:
        self.failed_flights += 1
        previous = self._failures.pop(key, None)
        count = previous.count + 1 if previous else 1
        self._failures[key] = _Failure(count, trio.current_time() + self.backoff(count), error)
        while len(self._failures) > _MAX_REMEMBERED_FAILURES:
            self._failures.popitem(last=False)

    def backoff(self, attempt: int) -> float:
        """Delay after the ``attempt``-th failure: half fixed, half random.

        "Equal jitter" rather than full jitter: retries from many nodes spread
        out, but none comes back at once.
        """
        cap = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        return float(cap / 2 + self._random.uniform(0, cap / 2))


def copy_error(error: CacheError, note: str = "") -> CacheError:
    """A fresh exception per waiter: one object raised in many tasks gets tangled tracebacks."""
    try:
        copy = type(error)(f"{error}{note}")
    except TypeError:
        copy = FetchError(f"{error}{note}")
    copy.__cause__ = error.__cause__
    return copy
