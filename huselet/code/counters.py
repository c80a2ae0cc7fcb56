"""The package cache's counters, declared once: the prefetcher's and the publish watcher's.

Both show under ``huselet ctl cache``; members are their strings (StrEnums),
so the JSON keeps its words.
"""

from __future__ import annotations

from enum import StrEnum


class PrefetchCounter(StrEnum):
    QUEUED = "queued"  # images asked for (admin, fleet, prediction)
    FETCHED = "fetched"
    PRESENT = "present"  # already in the store: nothing to fetch
    FAILED = "failed"
    PREDICTED = "predicted"  # queued because the function is expected again soon


class PublishCounter(StrEnum):
    PUBLISHED = "published"
    REJECTED = "rejected"
    RETRIED = "retried"  # a transient failure (store full, out of descriptors) tried again
    OVERFLOWS = "overflows"  # more files arrived than the watcher queues
