"""The node's dispatch: from an accepted invocation to an instance and back.

- :mod:`~huselet.dispatch.dispatcher`: :class:`Dispatcher`, every function's pool,
  what the ingress calls;
- :mod:`~huselet.dispatch.pool`: one function's buffer, admission and scaling;
- :mod:`~huselet.dispatch.lifecycle`: starting and tearing down one pool instance;
- :mod:`~huselet.dispatch.serving`: requests on a ready instance, results, retries;
- :mod:`~huselet.dispatch.instance`: one instance as the pool sees it;
- :mod:`~huselet.dispatch.invocation`: one request travelling to an instance and back;
- :mod:`~huselet.dispatch.buffer`: the bounded per-function queue instances pull from;
- :mod:`~huselet.dispatch.links`: the per-function Unix sockets instances connect to;
- :mod:`~huselet.dispatch.functions`: deploying, replacing, updating and removing a
  function (what reload and the fleet's commands both use);
- :mod:`~huselet.dispatch.counters`: every counter a pool keeps (:class:`PoolCounter`).

"Scheduler" in huselet names the *central* scheduler only (see
:mod:`huselet.fleet`); the node-local one is the dispatcher.
"""
