"""A task for `test_batch`'s scheduler tests, in a module of its own: Ray's workers import it, and importing
the test module itself (pytest, torch, loraedit) would cost each worker seconds."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def record(payload: dict) -> dict:
    """Log start and end, then fail / die / succeed as the payload says (`once`: the first try only)."""
    folder = Path(payload["folder"])
    start = time.time()
    time.sleep(payload.get("sleep", 0.0))
    marker = folder / f"{payload['name']}.{payload.get('once', '')}"
    if payload.get("once") and marker.is_file():
        marker.unlink()
        if payload["once"] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return {"status": "failed", "retry": True, "error": "flaky"}
    if payload.get("always") == "fail":
        return {"status": "failed", "retry": payload.get("retry", True), "error": "broken"}
    (folder / f"{payload['name']}.times").write_text(json.dumps([start, time.time()]))
    return {"status": "done"}
