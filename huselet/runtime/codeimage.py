"""What an instance imports its code from, as the runtimes see it.

The pool hands a runtime one path, ``InstanceSpec.image`` — the function's own
image. A :class:`CodeImage` is that path (a ``Path``, so every runtime keeps
working with it as one) carrying the rest an instance needs besides: the
function's layer images, and the native trees the daemon extracted for them
(``cache/native.py``). Runtimes bind :func:`code_ro_paths` read-only into a
sandbox, pass :func:`code_env` to the worker, and key zygotes and sandbox
templates by :func:`code_key` (new code or new layers: a new zygote).
"""

from __future__ import annotations

import os
from pathlib import PosixPath
from typing import Any


class CodeImage(PosixPath):
    """The function's image path, with its layers and extracted native trees."""

    layers: tuple[str, ...] = ()  # layer image paths, in import order
    native_dirs: tuple[str, ...] = ()  # extract/<digest> trees of the image and its layers
    extract_root: str | None = None

    @classmethod
    def make(
        cls,
        image: os.PathLike[str] | str,
        *,
        layers: tuple[str, ...] = (),
        native_dirs: tuple[str, ...] = (),
        extract_root: str | None = None,
    ) -> CodeImage:
        code = cls(image)
        code.layers, code.native_dirs, code.extract_root = layers, native_dirs, extract_root
        return code


def code_ro_paths(image: Any) -> tuple[str, ...]:
    """Every path an instance reads code from (bound read-only into sandboxes)."""
    if image is None:
        return ()
    if isinstance(image, CodeImage):
        return (str(image), *image.layers, *image.native_dirs)
    return (str(image),)


def code_env(image: Any) -> dict[str, str]:
    """The worker's environment for its code (see ``huselet.worker.sdk.load_handler``)."""
    if image is None:
        return {}
    env = {"HUSELET_IMAGE": str(image)}
    if isinstance(image, CodeImage):
        if image.layers:
            env["HUSELET_LAYERS"] = os.pathsep.join(image.layers)
        if image.extract_root is not None:
            env["HUSELET_EXTRACT_DIR"] = image.extract_root
    return env


def code_key(image: Any) -> str:
    """Distinguishes code for zygote and template caches: the image and its layers."""
    if isinstance(image, CodeImage):
        return os.pathsep.join((str(image), *image.layers))
    return str(image)
