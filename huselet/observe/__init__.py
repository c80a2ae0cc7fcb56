"""Following requests: request and trace ids, per-request timings, the access log,
the per-function log ring behind ``huselet ctl logs``, and the worker's tagged output.

- :mod:`huselet.observe.ids`: cheap request ids and W3C ``traceparent`` handling;
- :mod:`huselet.observe.context`: :class:`RequestMeta`, what the ingress and the
  dispatcher share about one request (trace in, timings out, ``Server-Timing``);
- :mod:`huselet.observe.ring`: the bounded in-memory log ring per function;
- :mod:`huselet.observe.story`: the records one request leaves (admission,
  start, deadline kill, access record) and its metrics;
- :mod:`huselet.observe.output`: the daemon side of the worker's output tags.
"""
