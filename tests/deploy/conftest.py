"""Fixtures for the deployment tests: the Compose checker (a Go program on compose-go, built once and
cached) and the loaded deploy/docker-compose.yml.

No docker engine is needed. The first run builds tests/deploy/composecheck with Go (modules from the
Go module proxy, about 30 s on 2 cores); the binary is cached under $LAKEWARD_TOOLS_CACHE (default
~/.cache/lakeward), keyed by the hash of go.mod, go.sum, main.go and the Go version, so it is rebuilt
only when one of them changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
CHECKER_SRC = Path(__file__).resolve().parent / "composecheck"
GO_CANDIDATES = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")
BUILD_TIMEOUT_S = 600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deploy: checks deploy/ (compose file, Dockerfile, demo config); builds a Go helper once")


def find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    return next((g for g in GO_CANDIDATES if os.access(g, os.X_OK)), None)


def _cache_dir() -> Path:
    base = os.environ.get("LAKEWARD_TOOLS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lakeward")
    return Path(base)


def build_checker() -> Path:
    """The composecheck binary: from the cache, else built now (atomically moved into the cache)."""
    go = find_go()
    if go is None:
        pytest.fail("the deployment tests need Go (1.24+) to build tests/deploy/composecheck: install it "
                    "(apt-get install golang, or the go.dev tarball in /usr/local/go)", pytrace=False)
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    h = hashlib.sha256(version.encode())
    for name in ("go.mod", "go.sum", "main.go"):
        h.update(name.encode() + b"\0" + (CHECKER_SRC / name).read_bytes())
    cache = _cache_dir()
    binary = cache / f"composecheck-{h.hexdigest()[:16]}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    fd, tmp = tempfile.mkstemp(prefix=".composecheck-", dir=cache)
    os.close(fd)
    t0 = time.monotonic()
    try:
        proc = subprocess.run([go, "build", "-trimpath", "-o", tmp, "."], cwd=CHECKER_SRC, env=env,
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            pytest.fail(f"building tests/deploy/composecheck failed ({go}, {version}):\n{proc.stderr}", pytrace=False)
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
        for stale in cache.glob("composecheck-*"):  # builds of older sources
            if stale != binary:
                stale.unlink(missing_ok=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"\nbuilt {binary} in {time.monotonic() - t0:.1f}s")
    return binary


@dataclass
class Loaded:
    """What composecheck said about one compose file."""

    returncode: int
    stderr: str
    project: dict[str, Any]
    extensions: dict[str, dict[str, Any]]
    warnings: list[str]

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.project["services"]


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment: the developer's own DEMO_* / LAKEWARD_* / AWS_* variables stay out."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(extra)
    return env


def load_compose(checker: Path, path: Path = COMPOSE_FILE, *, all_profiles: bool = True, **env: str) -> Loaded:
    """Run composecheck on `path` with a clean environment plus `env`; the project's .env is ignored.
    `all_profiles`: load the services of every profile too (else: what `docker compose up` starts)."""
    args = [str(checker), *(["-all-profiles"] if all_profiles else []), str(path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env=clean_env(COMPOSE_DISABLE_ENV_FILE="1", **env))
    if proc.returncode != 0:
        return Loaded(proc.returncode, proc.stderr, {}, {}, [])
    out = json.loads(proc.stdout)
    return Loaded(0, proc.stderr, out["project"], out.get("service_extensions") or {}, out["warnings"])


@pytest.fixture(scope="session")
def checker() -> Path:
    return build_checker()


@pytest.fixture(scope="session")
def compose(checker: Path) -> Loaded:
    loaded = load_compose(checker)
    assert loaded.returncode == 0, f"deploy/docker-compose.yml does not load:\n{loaded.stderr}"
    return loaded
