"""Local health loops: each owns one fault class, reports its state, and heals.

:class:`~huselet.health.supervisor.HealthSupervisor` runs the loops and answers
``huselet ctl health``; :mod:`~huselet.health.lag` measures the event loop's
own responsiveness; :mod:`~huselet.health.watchdog` pets the systemd watchdog
only while the daemon is really working.
"""
