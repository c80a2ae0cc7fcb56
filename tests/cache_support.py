"""Folded into :mod:`cache_testkit` (one module for the image and package cache
tests); this name stays for tests written before the fold. Import from there."""

from cache_testkit import (
    APP_FILES,
    OriginServer,
    build_image,
    variant,
    write_tree,
)
from cache_testkit import publish as write_zst
from support import closed_port

__all__ = [
    "APP_FILES",
    "OriginServer",
    "build_image",
    "closed_port",
    "variant",
    "write_tree",
    "write_zst",
]
