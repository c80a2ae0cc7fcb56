"""Node gateway: the front ends through which callers reach the node's functions.

:class:`HttpIngress` serves HTTP/1.1 (llhttp via httptools, on trio); :class:`FramedIngress`
serves the framed msgpack protocol (``protocol/FRAMED.md``). Both hand each
invocation to one :class:`InvokeCore` (admission and error rules) in front of an
:class:`Invoker` (the node's dispatcher); ``routes``, ``responses`` and
``httpfunc`` hold the HTTP ingress's pure, I/O-free parts. ``admission`` decides
who may invoke what, how often, for both front ends (``admission_types``,
``source_guard``, ``auth_bearer``, ``auth_signed`` and ``quotas`` are its parts).
"""

from huselet.gateway.core import InvokeCore, Invoker
from huselet.gateway.framed import FramedIngress
from huselet.gateway.http import HttpIngress

__all__ = ["FramedIngress", "HttpIngress", "InvokeCore", "Invoker"]
