"""What other subsystems may use of the dispatcher: small typing Protocols.

Health loops, the fleet link and the fleet's commands hold the node's
:class:`~huselet.dispatch.dispatcher.Dispatcher`, but each needs only a few
of its members; naming them here (instead of ``Any``) lets mypy check both
sides and shows the boundary. The Dispatcher and FunctionPool satisfy these
structurally; nothing inherits from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from huselet.config import FunctionSettings
    from huselet.dispatch.events import ChangeListener
    from huselet.dispatch.instance import InstanceRecord
    from huselet.health.breaker import CircuitBreaker


class PoolView(Protocol):
    """One function's pool, read-only: its counters, instances and breaker."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> FunctionSettings: ...

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def instances(self) -> Mapping[str, InstanceRecord]: ...

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def accepting(self) -> bool: ...


class PoolsView(Protocol):
    """Every function's pool (the health loops read counters and breakers)."""

    @property
    def pools(self) -> Mapping[str, PoolView]: ...


class ObservedDispatcher(PoolsView, Protocol):
    """What the fleet's state model reads and observes: functions, instances, changes."""

    def subscribe(self, listener: ChangeListener) -> None: ...

    def unsubscribe(self, listener: ChangeListener) -> None: ...

    def describe_function(self, name: str) -> dict[str, Any]: ...


class FunctionDeployer(PoolsView, Protocol):
    """What the central scheduler's commands change: deployed functions and their quotas."""

    @property
    def function_meta(self) -> Mapping[str, Mapping[str, Any]]: ...

    def deploy_function(self, fn: FunctionSettings, meta: dict[str, Any]) -> object: ...

    def update_function(self, fn: FunctionSettings) -> None: ...

    def remove_function(self, name: str) -> bool: ...

    def set_quota(self, name: str, *, max_instances: int, min_instances: int) -> None: ...
