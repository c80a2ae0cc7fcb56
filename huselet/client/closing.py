"""A mixin for clients that hold a connection: ``with client:`` closes it at the end."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """Subclasses define :meth:`close`; ``with`` gives the object and closes it after."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
