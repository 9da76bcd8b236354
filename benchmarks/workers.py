"""The `lakeward run` worker processes of the benchmarks."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from measure import cpu_seconds, proc_status_kb
from services import ROOT

STOP_TIMEOUT_S = 120


class Worker:
    """A `lakeward run` subprocess with JSON logs (so log lines carry millisecond timestamps)."""

    def __init__(self, config: Path, role: str, logfile: Path, profile: Path | None = None):
        self.config, self.role, self.logfile = config, role, logfile
        which = ["--source", "shop"] if role == "source" else ["--sink", "lake"]
        python = [sys.executable]
        if profile is not None:  # a sampling profile of the worker (pyinstrument must be installed)
            python += ["-m", "pyinstrument", "-r", "session", "-o", str(profile)]
        self.args = [*python, "-m", "lakeward.app.cli", "--log-format", "json", "-c", str(config), "run", *which]
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> Worker:
        self._out = open(self.logfile, "ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def lines(self) -> list[dict]:
        out = []
        for line in self.logfile.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    async def wait_log(self, needle: str, timeout: float) -> float:
        """Epoch time of the first log line containing `needle` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.lines():
                if needle in d.get("msg", ""):
                    ts = datetime.strptime(d["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                    return ts.timestamp()
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} worker exited ({self.proc.returncode}) before logging {needle!r}:\n{self.tail()}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.role} worker did not log {needle!r} within {timeout}s:\n{self.tail()}")

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])

    def errors(self) -> list[str]:
        return [d["msg"] for d in self.lines() if d.get("level") in ("error", "critical")]

    def hwm_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmHWM")
        return kb / 1024 if kb is not None else None

    def rss_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmRSS")
        return kb / 1024 if kb is not None else None

    def reset_hwm(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    async def stop(self) -> int:
        """SIGTERM, and SIGKILL when the worker has not exited after STOP_TIMEOUT_S."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

