"""Every counter a health loop's report keeps, declared once.

Each loop counts into its :class:`~huselet.health.supervisor.LoopReport`;
``huselet ctl health`` shows them and the metrics read some back
(``huselet_health_actions``, ``huselet_health_loop_crashes``). Members are
their strings (a StrEnum), so the health JSON is unchanged. The
``instances`` loop also reports pool counters
(:class:`~huselet.dispatch.counters.PoolCounter`) under their own names.
"""

from __future__ import annotations

from enum import StrEnum


class HealthCounter(StrEnum):
    # Every loop (the supervisor keeps these).
    STATE_CHANGES = "state_changes"
    ACTIONS = "actions"
    CRASHES = "crashes"
    # Sampling loops (lag, memory, disk, pids).
    SAMPLES = "samples"
    MEASURE_ERRORS = "measure_errors"
    # The event-loop lag probe.
    STALLS = "stalls"
    # The systemd watchdog.
    PETS = "pets"
    SKIPPED = "skipped"
    # Pressure loops: entering and leaving pressure, and what they shed.
    ENTERED = "entered"
    LEFT = "left"
    IMAGES_EVICTED = "images_evicted"
    INSTANCES_REAPED = "instances_reaped"
    # Observer loops.
    BREAKERS_OPENED = "breakers_opened"
    RECONNECTS = "reconnects"
    PASSES = "passes"
    QUARANTINED = "quarantined"
    # The idle tick: times the node went quiet, and times activity snapped it back.
    WENT_QUIET = "went_quiet"
    SNAP_BACKS = "snap_backs"
    # The startup recovery sweep (besides one counter per kind of leftover).
    FAILED = "failed"
    SWEEP_MS = "sweep_ms"


class Leftover(StrEnum):
    """What the startup sweep finds of a previous run, one ``recovery`` counter each."""

    PROCESSES = "processes"
    CGROUPS = "cgroups"
    SOCKETS = "sockets"
    TEMP_FILES = "temp_files"
    STAGING_DIRS = "staging_dirs"
