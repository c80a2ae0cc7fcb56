"""``huselet ctl scheduler`` text: standalone, connected, backing off, odd replies."""

from __future__ import annotations

from huselet.admin.render_fleet import render_scheduler

CONNECTED = {
    "mode": "fleet",
    "node_id": "node-1",
    "boot_id": "b1",
    "state": "established",
    "connected_s": 42.0,
    "address": "127.0.0.1:7000",
    "addresses": ["127.0.0.1:7000", "127.0.0.1:7001"],
    "scheduler_id": "sched-a",
    "epoch": 3,
    "seq": 120,
    "acked": 118,
    "unacked_frames": 2,
    "pending_changes": 5,
    "lag_s": 0.02,
    "cmd_stream": "sched-a/3/1",
    "cmd_applied": 7,
    "lease": {"held": True, "expires_in_s": 9.5},
    "placements": "open",
    "last_resync": {"age_s": 40.0, "reason": "welcome", "count": 12},
    "resyncs": 1,
    "connects": 2,
    "last_close": "the scheduler closed the connection",
    "errors": {"ConnectionRefusedError": 4},
    "commands": {"executed": {"deploy_function": 7}, "failed": {}},
    "resources": 12,
}


def test_standalone() -> None:
    assert render_scheduler({"mode": "standalone"}).startswith("standalone")


def test_connected_link_shows_address_epoch_seq_ack_lag_and_resync() -> None:
    text = render_scheduler(CONNECTED)
    lines = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
    assert lines["link"].strip() == "established for 42s"
    assert lines["address"].strip() == "127.0.0.1:7000"
    assert lines["epoch"].strip() == "3"
    assert lines["seq/ack"].strip().startswith("120/118 (2 unacked, 5 changes pending)")
    assert "40s ago, 12 resources (welcome)" in text
    assert "deploy_function=7" in text and "ConnectionRefusedError=4" in text


def test_backing_off_and_missing_fields() -> None:
    text = render_scheduler({"mode": "fleet", "state": "backoff", "retry_in_s": 1.5})
    assert "backoff, retry in 1.5s" in text
    assert "never" in text  # no resync yet
    assert "not held" not in text  # no lease field at all: unknown, not "not held"
