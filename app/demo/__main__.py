"""`make demo`: python -m lakeward.app.demo [CONFIG]   (default deploy/lakeward.yaml)

Runs the same config and commands as deploy/docker-compose.yml, against the local services:

    lakeward -c CONFIG demo setup --reset         tables and seed rows; earlier demo state removed
    lakeward -c CONFIG run --source shop          one worker process per source and sink
    lakeward -c CONFIG run --source inventory
    lakeward -c CONFIG run --sink lake
    lakeward -c CONFIG demo load --seconds N      orders, payments, stock moves, one ALTER each
    lakeward -c CONFIG demo check                 lake == source, per table; exit 1 otherwise

while showing live progress (events on the broker, applied to the lake, lag, Delta versions).
Environment: DEMO_SECONDS (load duration, default 60), DEMO_DIR (lake and logs, default ./demo);
LAKEWARD_LAKE / LAKEWARD_BROKER / SHOP_DSN / INVENTORY_* as deploy/lakeward.yaml reads them.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from lakeward.app.demo.check import check_all
from lakeward.app.demo.data import demo_sources
from lakeward.app.runner import build_workers
from lakeward.core.config import load_config
from lakeward.core.errors import LakewardError
from lakeward.core.logs import setup_logging
from lakeward.core.sink import SinkStatus
from lakeward.core.source import SourceStatus

console = Console()
CATCH_UP_TIMEOUT_S = 120.0
FIRST_METRICS_PORT = 9464


class Demo:
    def __init__(self, config: Path, workdir: Path, seconds: float):
        self.config = config
        self.workdir = workdir
        self.seconds = seconds
        self.env = dict(os.environ)
        self.env.setdefault("LAKEWARD_LAKE", str(workdir / "lake"))
        os.environ.update(self.env)  # this process reads the config the way the workers do
        self.cli = self._lakeward()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @staticmethod
    def _lakeward() -> list[str]:
        script = Path(sys.executable).parent / "lakeward"
        return [str(script)] if script.exists() else [sys.executable, "-c", "from lakeward.app.cli import main; main()"]

    def command(self, *args: str) -> list[str]:
        return [*self.cli, "-c", str(self.config), *args]

    def show(self, cmd: list[str]) -> None:
        console.print(f"[dim]$ lakeward {shlex.join(cmd[len(self.cli):])}[/]")

    def start(self, name: str, *args: str) -> None:
        cmd = self.command(*args)
        self.show(cmd)
        log = open(self.workdir / "logs" / f"{name}.log", "wb")  # lives as long as the process
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None and p.returncode != 0:
                tail = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{name} exited with {p.returncode}; last lines of {self.workdir}/logs/{name}.log:\n" + "\n".join(tail))

    def stop_workers(self) -> bool:
        """SIGTERM drains in-flight work; every worker must exit 0."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        ok = True
        for name, p in self.procs.items():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.returncode != 0 and name != "load":
                console.print(f"[red]{name} exited with {p.returncode}[/] (see {self.workdir}/logs/{name}.log)")
                ok = False
        return ok

    def run(self) -> int:
        setup_logging("WARNING")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        console.rule("[bold]Lakeward demo: a shop in PostgreSQL, its inventory in MariaDB/MySQL, mirrored into Delta Lake")
        try:
            cfg = load_config(self.config)
            sources = demo_sources(cfg, self.config)
            setup = self.command("demo", "setup", "--reset")
            self.show(setup)
            subprocess.run(setup, check=True, env=self.env)
            port = FIRST_METRICS_PORT
            for s in cfg.sources:
                self.start(f"source-{s.name}", "run", "--source", s.name, "--metrics-port", str(port))
                port += 1
            for s in cfg.sinks:
                self.start(f"sink-{s.name}", "run", "--sink", s.name, "--metrics-port", str(port))
                port += 1
            self.start("load", "demo", "load", "--seconds", str(self.seconds))
            ok = asyncio.run(self._watch(cfg, sources))
        except (LakewardError, RuntimeError, subprocess.CalledProcessError) as e:
            console.print(f"[bold red]demo failed:[/] {e}")
            self.stop_workers()
            return 1
        except KeyboardInterrupt:
            self.stop_workers()
            return 130
        except BaseException:  # a bug in the demo itself: its workers must not outlive it
            self.stop_workers()
            raise
        ok = self.stop_workers() and ok
        check = self.command("demo", "check")
        self.show(check)
        ok = subprocess.run(check, env=self.env).returncode == 0 and ok
        lake = self.env["LAKEWARD_LAKE"]
        console.print(f"\nThe lake is at [bold]{lake}[/]; the config at {self.config}. Query it:")
        console.print(f"  LAKEWARD_LAKE={lake} {shlex.join(self.command('query', 'SELECT status, count(*) FROM shop.public.orders GROUP BY 1'))}")
        console.print(f"  LAKEWARD_LAKE={lake} {shlex.join(self.command('status'))}")
        slot = sources.shop.slot_name
        console.print(f"The replication slot {slot} stays, so `lakeward run` resumes where the demo stopped; it holds WAL while "
                      f"nothing reads it. `make demo` starts over; to retire it: SELECT pg_drop_replication_slot('{slot}')")
        console.print("[bold green]lake == source[/]" if ok else "[bold red]lake != source[/]")
        return 0 if ok else 1

    async def _watch(self, cfg: Any, sources: Any) -> bool:
        """Live progress while the load runs, then until the lake equals the source (or time runs out)."""
        started = time.monotonic()
        load = self.procs["load"]
        status_workers = build_workers(cfg, None, None)
        live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        last_print = 0.0
        deadline: float | None = None
        if live:
            live.start()
        try:
            while True:
                self.check_alive()
                report = await _status(status_workers)
                elapsed = time.monotonic() - started
                phase = "load running" if load.poll() is None else "load done; waiting for the lake to catch up"
                view = _progress(report, elapsed, phase)
                if live:
                    live.update(view)
                elif time.monotonic() - last_print >= 5:  # logs (CI): one line now and then, not redrawn tables
                    console.print(_summary(report, elapsed, phase), highlight=False)
                    last_print = time.monotonic()
                if load.poll() is not None:
                    if load.returncode != 0:
                        raise RuntimeError(f"the load generator exited with {load.returncode}; see {self.workdir}/logs/load.log")
                    deadline = deadline or time.monotonic() + CATCH_UP_TIMEOUT_S
                    if _caught_up(report):
                        checks = await asyncio.to_thread(check_all, cfg, sources)
                        if all(c.equal for c in checks):
                            if live:
                                live.update(_progress(report, elapsed, "caught up: lake == source"))
                            else:
                                console.print(_progress(report, elapsed, "caught up: lake == source"))
                            return True
                    if time.monotonic() > deadline:
                        console.print(f"[red]the lake did not catch up within {CATCH_UP_TIMEOUT_S:.0f}s[/]")
                        return False
                await asyncio.sleep(1.0)
        finally:
            if live:
                live.stop()


async def _status(workers: list[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"sources": [], "tables": []}
    for w in workers:
        try:
            st = await w.status()
        except LakewardError as e:
            st = {"error": str(e)}
        if isinstance(st, SinkStatus):
            out["tables"].extend(st.to_dict()["tables"])
        elif isinstance(st, SourceStatus):
            out["sources"].append(st.to_dict())
        else:
            out["sources"].append(st)
    return out


def _caught_up(report: dict[str, list[dict[str, Any]]]) -> bool:
    return bool(report["tables"]) and all(t.get("lag") == 0 and not t.get("error") for t in report["tables"])


def _summary(report: dict[str, list[dict[str, Any]]], elapsed: float, phase: str) -> str:
    applied = sum(0 if t.get("committed_offset") is None else t["committed_offset"] + 1 for t in report["tables"])
    lag = sum(t.get("lag") or 0 for t in report["tables"])
    versions = sum(t.get("version") or 0 for t in report["tables"])
    return (f"[{elapsed:4.0f}s] {phase}: {applied + lag} events on the broker, {applied} applied to the lake, "
            f"lag {lag}, {versions} Delta commits in {len(report['tables'])} tables")


def _progress(report: dict[str, list[dict[str, Any]]], elapsed: float, phase: str) -> Group:
    tables = Table("lake table", "events", "in lake", "lag", "version", "last commit",
                   title=f"[bold]{elapsed:5.0f}s[/] {phase}", title_justify="left")
    for t in sorted(report["tables"], key=lambda t: t["table"]):
        committed = t.get("committed_offset")
        applied = 0 if committed is None else committed + 1
        lag = t.get("lag")
        end = applied + lag if lag is not None else None
        tables.add_row(t["table"], str(end if end is not None else "-"), str(applied), str(lag if lag is not None else "-"),
                       str(t.get("version") if t.get("version") is not None else "-"),
                       (t.get("last_commit") or "-")[11:19], style="red" if t.get("error") else None)
    sources = Table("source", "position", "lag bytes", title_justify="left")
    for s in report["sources"]:
        sources.add_row(str(s.get("source", "?")), str(s.get("confirmed") or "-"),
                        str(s.get("lag_bytes", s.get("error", "-"))))
    return Group(sources, tables)


def main() -> None:
    config = Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/lakeward.yaml")
    seconds = float(os.environ.get("DEMO_SECONDS", "60"))
    workdir = Path(os.environ.get("DEMO_DIR", "demo")).resolve()
    sys.exit(Demo(config, workdir, seconds).run())


if __name__ == "__main__":
    main()
