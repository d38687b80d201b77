"""``benchbio ui``: the MLflow server it starts goes away with it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list processes")
def test_sigterm_stops_the_whole_mlflow_server(tmp_path):
    port = _free_port()
    exe = shutil.which("benchbio", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "benchbio.cli"]
    log = tmp_path / "ui.log"
    with log.open("wb") as out:  # a file, not a pipe nobody reads
        proc = subprocess.Popen([*cmd, "ui", "--port", str(port)], env=os.environ.copy(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                tail = log.read_text(errors="replace")[-300:]
                pytest.skip(f"mlflow's server did not start here: {tail}")
            time.sleep(0.5)
        server = _descendants(proc.pid)
        assert server, "benchbio ui started no server process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in server if _alive(pid)], "server processes left behind"
        assert not _listening(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _descendants(proc.pid):
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
