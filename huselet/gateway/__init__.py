"""Node gateway: the HTTP ingress through which callers reach the node's functions.

:class:`HttpIngress` serves HTTP/1.1 (h11 on trio) and hands each invocation to
an :class:`Invoker` (the node scheduler); ``routes`` and ``responses`` hold its
pure, I/O-free parts.
"""

from huselet.gateway.http import HttpIngress, Invoker

__all__ = ["HttpIngress", "Invoker"]
