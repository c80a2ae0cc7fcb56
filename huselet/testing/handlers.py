"""The function handlers the runtime conformance suite runs (Python source).

Kept tiny: the suite is about the runtime, not the handler. The isolation
probe (``ESCAPE_HANDLER``) lives in :mod:`huselet.testing.probes`.
"""

from __future__ import annotations

ECHO = """
import os
def handler(event, context):
    return {"event": event, "pid": os.getpid(), "instance": context.instance_id,
            "token_in_env": any(k == "HUSELET_TOKEN" for k in os.environ)}
"""
SLEEPER = """
import time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"awake": True}
"""
EXITER = """
import os
def handler(event, context):
    os._exit(event["code"])
"""
HOG = """
def handler(event, ctx):
    blocks = []
    for _ in range(64):
        blocks.append(b"x" * (8 << 20))  # touched: really resident
    return len(blocks)
"""
FORK_BOMB = """
import os, time

def handler(event, ctx):
    children = 0
    while children < 10_000:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"forked": children, "error": exc.strerror}
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
    return {"forked": children, "error": None}
"""
BROKEN = "raise RuntimeError('boom at import')\n"
SLOW_IMPORT = "import time\ntime.sleep(600)\ndef handler(e, c):\n    return 1\n"
