"""``importlib.resources`` support for packages imported from an image.

``importlib.resources.files("pkg").joinpath("data.txt").read_bytes()`` lands
here: the loader's ``get_resource_reader`` returns an
:class:`ImageResourceReader` whose :meth:`~ImageResourceReader.files` is an
:class:`ImageTraversable` walking the image index. Bytes come straight from
the mapping; ``importlib.resources.as_file`` works through ``read_bytes``
(it writes a temporary file, as for zip imports).

Kept out of :mod:`cache.importer` because ``importlib.resources.abc`` imports
``typing``; only code that uses resources pays for it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from importlib.resources.abc import Traversable, TraversableResources
from typing import IO, Any

from cache.reader import ImageReader
from cache.validate import normalise_lookup_path


class ImageTraversable(Traversable):
    """A path inside an image, with the subset of ``pathlib.Path`` that resources need."""

    def __init__(self, reader: ImageReader, path: str) -> None:
        self._reader = reader
        self._path = path  # image path in index form; "" is the image root

    @property
    def name(self) -> str:
        return self._path.rpartition("/")[2]

    def iterdir(self) -> Iterator[ImageTraversable]:
        for name in self._reader.listdir(self._path):
            yield ImageTraversable(self._reader, f"{self._path}/{name}" if self._path else name)

    def is_dir(self) -> bool:
        return self._reader.is_dir(self._path)

    def is_file(self) -> bool:
        return self._reader.is_file(self._path)

    def joinpath(self, *descendants: str) -> ImageTraversable:  # type: ignore[override]
        joined = "/".join([self._path, *map(str, descendants)])
        normalised = normalise_lookup_path(joined)
        if normalised is None:
            raise ValueError(f"{joined!r} leaves the image")
        return ImageTraversable(self._reader, normalised)

    def __truediv__(self, child: str) -> ImageTraversable:  # type: ignore[override]
        return self.joinpath(child)

    def read_bytes(self) -> bytes:
        return bytes(self._reader.read(self._path))

    def read_text(self, encoding: str | None = None) -> str:
        with self.open("r", encoding=encoding) as stream:
            text: str = stream.read()
            return text

    def open(self, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        if mode not in ("r", "rb"):
            raise ValueError(f"image resources are read-only; mode {mode!r} is not 'r' or 'rb'")
        stream = io.BytesIO(self.read_bytes())
        if mode == "rb":
            return stream
        return io.TextIOWrapper(stream, *args, **kwargs)

    def __str__(self) -> str:
        return f"{self._reader.path}/{self._path}" if self._path else self._reader.path

    def __repr__(self) -> str:
        return f"ImageTraversable({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageTraversable)
            and other._reader is self._reader
            and other._path == self._path
        )

    def __hash__(self) -> int:
        return hash((id(self._reader), self._path))


class ImageResourceReader(TraversableResources):
    """The resource reader of one module: rooted at the directory that holds it."""

    def __init__(self, reader: ImageReader, directory: str) -> None:
        self._root = ImageTraversable(reader, directory)

    def files(self) -> ImageTraversable:
        return self._root
