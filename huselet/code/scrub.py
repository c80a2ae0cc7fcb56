"""Background scrub: re-verify installed images at a steady, bounded pace.

Bit rot, a stray write or a tampered file must never reach a function: every
``interval_s`` the :class:`Scrubber` re-hashes each installed image (one at a
time, sleeping between images so the pass reads at most ``bytes_per_s``). A
bad image is quarantined by the store and handed to ``on_corrupt`` — the
package manager reports it and queues a refetch from its origin. Running
instances that already mapped it keep their mapping; the next start gets the
refetched copy.

``huselet ctl scrub`` runs a pass at once, unpaced (:meth:`Scrubber.scrub_now`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from cache.store import ImageStore
from huselet.log import get_logger

log = get_logger("scrub")


class Scrubber:
    def __init__(
        self,
        store: ImageStore,
        *,
        interval_s: float,
        bytes_per_s: float,
        on_corrupt: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.bytes_per_s = bytes_per_s
        self.on_corrupt = on_corrupt
        self._lock = trio.Lock()  # one pass at a time, timed or asked for
        self.passes = 0
        self.last_pass: dict[str, Any] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.interval_s <= 0:
            await trio.sleep_forever()
        while True:
            # No pass at start: the store already checked every header and index,
            # and a restart storm must not turn into a disk-read storm.
            await trio.sleep(self.interval_s)
            await self.scrub_now(paced=True)

    async def scrub_now(self, *, paced: bool = False) -> dict[str, Any]:
        """Verify every installed image; return what the pass found."""
        async with self._lock:
            started = trio.current_time()
            checked, checked_bytes, bad = 0, 0, []
            for image in self.store.images():
                t0 = trio.current_time()
                reason = await self.store.verify_image(image.digest)
                checked += 1
                checked_bytes += image.size
                if reason is not None:
                    bad.append({"digest": image.digest, "reason": reason})
                    if self.on_corrupt is not None:
                        try:
                            self.on_corrupt(image.digest, reason)
                        except Exception:  # reporting must not stop the scrub
                            log.exception("scrub report failed", digest=image.digest)
                if paced and self.bytes_per_s > 0:
                    # Sleep off the time this image "should" have taken at the set pace.
                    spent = trio.current_time() - t0
                    await trio.sleep(max(0.0, image.size / self.bytes_per_s - spent))
            self.passes += 1
            self.last_pass = {
                "checked": checked,
                "bytes": checked_bytes,
                "bad": bad,
                "seconds": round(trio.current_time() - started, 3),
                "ended_at": time.time(),
            }
            log.info("scrub pass done", checked=checked, bytes=checked_bytes, bad=len(bad))
            return self.last_pass
