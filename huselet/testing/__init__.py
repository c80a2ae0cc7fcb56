"""Test kits shipped with huselet, for its own suite and for plugin authors.

* :mod:`huselet.testing.stack` — the in-process node stack (runtimes, link
  server, dispatcher wired as the daemon wires them) with real workers.
* :mod:`huselet.testing.probes` — can this host sandbox; a handler that tries
  to escape and reports what happened; leftover checks.
* :mod:`huselet.testing.conformance` — the runtime conformance suite every
  runtime (built-in or third-party) must pass; see the README's Runtimes section.

These modules import pytest, which the daemon itself never needs: install the
``test`` extra to use them.
"""
