"""The machine's PostgreSQL server, stopped and started as an outage would (Debian's pg_ctlcluster)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from sqlalchemy import create_engine, text

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _cluster(action: str) -> None:
    versions = sorted((p.parent.name for p in Path("/etc/postgresql").glob("*/main")), key=lambda v: [int(n) for n in v.split(".")])
    assert versions, "no PostgreSQL cluster in /etc/postgresql (install Debian's postgresql)"
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action, *(["-m", "fast"] if action == "stop" else [])],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"pg_ctlcluster {action} failed: {done.stderr}"


def accepts_connections() -> bool:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means not (yet) accepting
        return False
    finally:
        engine.dispose()


def stop() -> None:
    """Stop the server (fast shutdown: open connections are cut, as in a crash or failover)."""
    _cluster("stop")


def start(timeout_s: float = 60.0) -> None:
    """Start the server if it is down, and wait until it accepts connections."""
    if not accepts_connections():
        _cluster("start")
    deadline = time.monotonic() + timeout_s
    while not accepts_connections():
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.2)
