"""deploy/docker-compose.yml, deploy/Dockerfile and deploy/lakeward.yaml, checked without a docker engine.

The compose file is loaded by tests/deploy/composecheck, built on compose-go (the loader of Docker
Compose itself): parsing, interpolation, the Compose Specification's JSON schema, normalization and the
consistency checks. The tests then hold the normalized model to the demo's rules (pinned images,
healthchecks, depends_on conditions, loopback-only host ports, the lakeward commands and config) and
check that the pieces agree: the workers' environment makes deploy/lakeward.yaml valid (`lakeward
validate`), the MySQL server's settings and grants pass the MySQL source's own start-up check, the
Dockerfile builds a wheel with every module and the `lakeward` entry point. What only a real
`docker compose up` can prove is listed in docs/deployment.md.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import COMPOSE_FILE, DEPLOY, REPO, Loaded, clean_env, load_compose

pytestmark = pytest.mark.deploy

CONFIG_FILE = DEPLOY / "lakeward.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MYSQL_INIT = DEPLOY / "mysql" / "lakeward.sql"
CONFIG_IN_CONTAINER = "/etc/lakeward/lakeward.yaml"
LAKEWARD_CLI = Path(sys.executable).with_name("lakeward")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

SERVICES = {"redpanda", "console", "postgres", "mysql", "minio", "minio-init", "demo-setup", "source-shop",
            "source-inventory", "sink-lake", "loadgen", "cli"}
# Services with a profile: not started by `docker compose up`, only by `docker compose run`
PROFILED = {"cli": ["tools"]}
# One-shot jobs: no healthcheck (they exit), restart "no", and an `x-lakeward-job:` saying what they do.
JOBS = {"minio-init", "demo-setup", "loadgen", "cli"}
# service -> {(host_ip, host port, container port)}: the only ports published on the host
PORTS = {
    "redpanda": {("127.0.0.1", "19092", 19092)},
    "console": {("127.0.0.1", "8080", 8080)},
    "postgres": {("127.0.0.1", "15432", 5432)},
    "mysql": {("127.0.0.1", "13306", 3306)},
    "minio": {("127.0.0.1", "19000", 9000), ("127.0.0.1", "19001", 9001)},
    "source-shop": {("127.0.0.1", "9464", 9464)},
    "source-inventory": {("127.0.0.1", "9465", 9464)},
    "sink-lake": {("127.0.0.1", "9466", 9464)},
}
# lakeward service -> its command, the arguments of the image's entrypoint `lakeward` (None: any value)
LAKEWARD_COMMANDS: dict[str, list[str | None]] = {
    "demo-setup": ["-c", CONFIG_IN_CONTAINER, "demo", "setup"],
    "source-shop": ["-c", CONFIG_IN_CONTAINER, "run", "--source", "shop"],
    "source-inventory": ["-c", CONFIG_IN_CONTAINER, "run", "--source", "inventory"],
    "sink-lake": ["-c", CONFIG_IN_CONTAINER, "run", "--sink", "lake"],
    "loadgen": ["-c", CONFIG_IN_CONTAINER, "demo", "load", "--seconds", None],
    "cli": ["--help"],  # replaced by `docker compose run --rm cli COMMAND`; LAKEWARD_CONFIG names the file
}
WORKERS = {"source-shop", "source-inventory", "sink-lake"}
PINNED_TAG = re.compile(r"^(v?\d+(\.\d+){1,3}(-[a-z0-9.]+)?|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)$")


# --- the rules, as a function of the loaded model (so the negative tests can show they bite) ---------

def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def policy_problems(loaded: Loaded) -> list[str]:
    problems = [f"compose warning: {w}" for w in loaded.warnings]
    services = loaded.services
    if set(services) != SERVICES:
        problems.append(f"services are {sorted(services)}, expected {sorted(SERVICES)}")
    for name, svc in sorted(services.items()):
        ext = loaded.extensions.get(name, {})
        if (svc.get("profiles") or None) != PROFILED.get(name):
            problems.append(f"{name}: profiles {svc.get('profiles')}, expected {PROFILED.get(name)}")
        # images: pinned, never `latest`; ours carries the package version
        image = svc.get("image") or ""
        tag = image_tag(image)
        if not tag or tag == "latest" or not PINNED_TAG.match(tag):
            problems.append(f"{name}: image {image!r} is not pinned to a version tag")
        if "build" in svc and image != f"lakeward:{VERSION}":
            problems.append(f"{name}: built image is named {image!r}, expected 'lakeward:{VERSION}'")
        # healthchecks, or a documented one-shot job
        hc = svc.get("healthcheck") or {}
        has_hc = bool(hc.get("test")) and not hc.get("disable")
        if name in JOBS:
            if not ext.get("x-lakeward-job"):
                problems.append(f"{name}: a job without a healthcheck needs `x-lakeward-job:` saying what it does")
            if svc.get("restart") != "no":
                problems.append(f"{name}: a one-shot job must have restart: \"no\", not {svc.get('restart')!r}")
            if "build" in svc and not hc.get("disable"):
                problems.append(f"{name}: a job from the lakeward image must disable the image's HEALTHCHECK (it serves no /healthz)")
        elif not has_hc:
            problems.append(f"{name}: no healthcheck")
        elif svc.get("restart") not in ("unless-stopped", "always"):
            problems.append(f"{name}: a long-running service should restart (unless-stopped), has {svc.get('restart')!r}")
        # depends_on: healthy for services, completed for jobs
        for dep, how in (svc.get("depends_on") or {}).items():
            want = "service_completed_successfully" if dep in JOBS else "service_healthy"
            if how.get("condition") != want:
                problems.append(f"{name}: depends_on {dep} with condition {how.get('condition')!r}, expected {want}")
        # host ports: only the expected ones, on loopback only
        published = {(p.get("host_ip", ""), str(p.get("published", "")), p.get("target")) for p in svc.get("ports") or []}
        for host_ip, port, target in sorted(published, key=str):
            if host_ip != "127.0.0.1":
                problems.append(f"{name}: port {port}->{target} is published on {host_ip or 'every address'}, not 127.0.0.1")
        if published != PORTS.get(name, set()):
            problems.append(f"{name}: publishes {sorted(published, key=str)}, expected {sorted(PORTS.get(name, set()), key=str)}")
        # lakeward services: our image, the demo config mounted read-only, the expected command
        if "build" in svc or image.startswith("lakeward:"):
            problems += _lakeward_problems(name, svc)
    missing = set(LAKEWARD_COMMANDS) - {n for n, s in services.items() if "build" in s}
    if missing:
        problems.append(f"lakeward services missing or not built from deploy/Dockerfile: {sorted(missing)}")
    return problems


def _lakeward_problems(name: str, svc: dict[str, Any]) -> list[str]:
    problems = []
    build = svc.get("build") or {}
    if Path(build.get("context", "")) != REPO or build.get("dockerfile") != "deploy/Dockerfile":
        problems.append(f"{name}: build {build} is not the repository with deploy/Dockerfile")
    mounts = [v for v in svc.get("volumes") or [] if v.get("target") == CONFIG_IN_CONTAINER]
    if not (len(mounts) == 1 and mounts[0].get("type") == "bind" and Path(mounts[0].get("source", "")) == CONFIG_FILE
            and mounts[0].get("read_only")):
        problems.append(f"{name}: deploy/lakeward.yaml is not mounted read-only at {CONFIG_IN_CONTAINER}: {mounts}")
    env = svc.get("environment") or {}
    if env.get("LAKEWARD_CONFIG") != CONFIG_IN_CONTAINER:
        problems.append(f"{name}: LAKEWARD_CONFIG is {env.get('LAKEWARD_CONFIG')!r}")
    command = svc.get("command") or []
    want = LAKEWARD_COMMANDS.get(name)
    if svc.get("entrypoint"):
        problems.append(f"{name}: overrides the image's entrypoint (lakeward): {svc['entrypoint']}")
    if want is None:
        problems.append(f"{name}: an unexpected lakeward service")
    elif len(command) != len(want) or any(w is not None and c != w for c, w in zip(command, want, strict=True)):
        problems.append(f"{name}: command {command}, expected {want} (None: any value)")
    if name in WORKERS:
        test = (svc.get("healthcheck") or {}).get("test") or []
        if "/healthz" not in " ".join(test) or "LAKEWARD_METRICS_PORT" not in " ".join(test):
            problems.append(f"{name}: the healthcheck does not ask the worker's /healthz: {test}")
        targets = {p.get("target") for p in svc.get("ports") or []}
        if targets != {int(env.get("LAKEWARD_METRICS_PORT", "0"))}:
            problems.append(f"{name}: publishes {targets}, but the worker serves metrics on LAKEWARD_METRICS_PORT={env.get('LAKEWARD_METRICS_PORT')}")
        if env.get("LAKEWARD_METRICS_HOST") != "0.0.0.0":
            problems.append(f"{name}: LAKEWARD_METRICS_HOST must be 0.0.0.0, else a published port can't reach the worker")
    return problems


# --- the compose file --------------------------------------------------------------------------------

def test_compose_file_loads_and_follows_the_rules(compose: Loaded) -> None:
    assert compose.warnings == []
    assert policy_problems(compose) == []


def test_up_starts_everything_but_the_tools(checker: Path) -> None:
    loaded = load_compose(checker, all_profiles=False)
    assert loaded.returncode == 0, loaded.stderr
    assert set(loaded.services) == SERVICES - set(PROFILED)


def _set(path: str, value: Any) -> Callable[[Loaded], None]:
    def mutate(m: Loaded) -> None:
        node: Any = m.project
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return mutate


def _pop(path: str) -> Callable[[Loaded], None]:
    def mutate(m: Loaded) -> None:
        node: Any = m.project
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node.pop(last)
    return mutate


def _publish_everywhere(m: Loaded) -> None:
    m.services["postgres"]["ports"][0]["host_ip"] = ""


def _no_job_note(m: Loaded) -> None:
    m.extensions.pop("minio-init")


@pytest.mark.parametrize(("mutate", "expect"), [
    (_set("services.redpanda.image", "docker.redpanda.com/redpandadata/redpanda:latest"), "redpanda: image"),
    (_set("services.minio.image", "minio/minio"), "minio: image"),
    (_pop("services.console.healthcheck"), "console: no healthcheck"),
    (_set("services.source-shop.healthcheck", {"disable": True}), "source-shop: no healthcheck"),
    (_no_job_note, "minio-init: a job without a healthcheck"),
    (_set("services.loadgen.healthcheck", {}), "loadgen: a job from the lakeward image must disable"),
    (_set("services.sink-lake.depends_on.minio-init.condition", "service_started"), "sink-lake: depends_on minio-init"),
    (_set("services.source-shop.depends_on.postgres.condition", "service_started"), "source-shop: depends_on postgres"),
    (_publish_everywhere, "postgres: port 15432->5432 is published on every address"),
    (_set("services.loadgen.ports", [{"host_ip": "127.0.0.1", "published": "9999", "target": 9999}]), "loadgen: publishes"),
    (_set("services.sink-lake.command", ["-c", CONFIG_IN_CONTAINER, "run", "--sink", "lakes"]), "sink-lake: command"),
    (_set("services.source-shop.command", ["run", "--source", "shop"]), "source-shop: command"),
    (_set("services.source-inventory.volumes.0.read_only", False), "source-inventory: deploy/lakeward.yaml is not mounted"),
    (_set("services.sink-lake.environment.LAKEWARD_METRICS_PORT", "9000"), "sink-lake: publishes"),
    (_pop("services.loadgen"), "lakeward services missing"),
])
def test_the_rules_catch_a_broken_model(compose: Loaded, mutate: Callable[[Loaded], None], expect: str) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = policy_problems(broken)
    assert any(expect in p for p in problems), problems


# Text edits of the compose file that Compose itself must refuse (the checker exits 1), or that load
# with a warning (an unset variable without a default) that the rules turn into a failure.
BROKEN_FILES = [
    ("unknown key", "    restart: unless-stopped\n", "    restartt: unless-stopped\n", "restartt"),
    ("depends_on an unknown service", "      minio-init:\n        condition", "      minio-inits:\n        condition",
     'undefined service "minio-inits"'),
    ("bad duration", "      interval: 5s\n", "      interval: five seconds\n", "interval"),
    ("bad condition", "condition: service_healthy", "condition: service_happy", "condition value must be one of"),
    ("port out of range", "127.0.0.1:19000:9000", "127.0.0.1:19000:90000", "90000"),
]


@pytest.mark.parametrize(("what", "old", "new", "expect"), BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_compose_refuses_a_broken_file(checker: Path, tmp_path: Path, what: str, old: str, new: str, expect: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the mutation for {what!r} no longer applies to deploy/docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    loaded = load_compose(checker, broken)
    assert loaded.returncode != 0, f"{what}: the broken file was accepted"
    assert expect in loaded.stderr


def test_an_unset_variable_is_a_failure(checker: Path, tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text()
    broken = tmp_path / "docker-compose.yml"
    assert "${DEMO_MYSQL_PASSWORD:-demo-mysql-secret}" in text
    broken.write_text(text.replace("${DEMO_MYSQL_PASSWORD:-demo-mysql-secret}", "${DEMO_MYSQL_PASSWORD}"))
    loaded = load_compose(checker, broken)
    assert loaded.returncode == 0
    assert any("DEMO_MYSQL_PASSWORD" in p for p in policy_problems(loaded))


def test_a_copy_of_the_file_loads(checker: Path, tmp_path: Path) -> None:
    """The control for the negative tests: an unchanged copy elsewhere loads."""
    copy_ = tmp_path / "docker-compose.yml"
    copy_.write_text(COMPOSE_FILE.read_text())
    assert load_compose(checker, copy_).returncode == 0


# --- the pieces agree ----------------------------------------------------------------------------------

def _env(compose: Loaded, service: str) -> dict[str, str]:
    return {k: v for k, v in (compose.services[service].get("environment") or {}).items() if v is not None}


def lakeward(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LAKEWARD_CLI), "-c", str(CONFIG_FILE), *args], cwd=REPO, env=clean_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_the_lakeward_services_share_one_environment(compose: Loaded) -> None:
    envs = {name: _env(compose, name) for name in LAKEWARD_COMMANDS}
    first = envs["source-shop"]
    assert all(e == first for e in envs.values()), envs


def test_config_validates_with_the_workers_environment(compose: Loaded) -> None:
    env = _env(compose, "source-shop")
    proc = lakeward("validate", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config ok: 2 source(s), 1 sink(s)" in proc.stdout.lower()
    proc = lakeward("config", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["broker"]["bootstrap_servers"] == "redpanda:9092"
    assert cfg["lake"]["uri"] == "s3://lake/demo"
    # the S3 settings come from the AWS_* environment (delta-rs reads it); nothing in the file may
    # override them with an empty value
    assert all(v != "" for v in cfg["lake"]["storage_options"].values()), cfg["lake"]["storage_options"]
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"} <= set(env)
    assert cfg["metrics"]["host"] == "0.0.0.0"
    sources = {s["name"]: s for s in cfg["sources"]}
    assert set(sources) == {"shop", "inventory"}
    assert urlsplit(sources["shop"]["dsn"]).hostname == "postgres"
    inv = sources["inventory"]
    assert (inv["type"], inv["host"], inv["port"], inv["user"]) == ("mysql", "mysql", 3306, "lakeward")
    assert [(s["name"], s["sources"], s["mode"]) for s in cfg["sinks"]] == [("lake", ["shop", "inventory"], "mirror")]


def test_config_defaults_are_the_local_services() -> None:
    """Without the containers' environment the same file is `make demo`'s: the local services."""
    proc = lakeward("config", "--json", env={})
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["broker"]["bootstrap_servers"] == "127.0.0.1:9092"
    assert cfg["lake"]["uri"] == "./demo/lake"
    assert cfg["metrics"]["host"] == "127.0.0.1"
    sources = {s["name"]: s for s in cfg["sources"]}
    assert sources["shop"]["dsn"] == "postgresql://postgres@127.0.0.1:5432/shop"
    assert (sources["inventory"]["host"], sources["inventory"]["port"]) == ("127.0.0.1", 3306)


def test_the_commands_name_what_the_config_has(compose: Loaded) -> None:
    proc = lakeward("config", "--json", env=_env(compose, "source-shop"))
    cfg = json.loads(proc.stdout)
    names = {"--source": {s["name"] for s in cfg["sources"]}, "--sink": {s["name"] for s in cfg["sinks"]}}
    for service in WORKERS:
        command = compose.services[service]["command"]
        flag, name = command[-2:]
        assert name in names[flag], f"{service}: {flag} {name} is not in deploy/lakeward.yaml"


def test_passwords_reach_both_ends(checker: Path) -> None:
    """Each secret is set once (DEMO_*) and arrives at the server and at the client that logs in to it."""
    secrets = {"DEMO_POSTGRES_PASSWORD": "pg-s3cret", "DEMO_MYSQL_ROOT_PASSWORD": "root-s3cret",
               "DEMO_MYSQL_PASSWORD": "my-s3cret", "DEMO_MINIO_USER": "minio-user", "DEMO_MINIO_PASSWORD": "minio-s3cret"}
    loaded = load_compose(checker, **secrets)
    assert loaded.returncode == 0, loaded.stderr
    assert policy_problems(loaded) == []
    s = loaded.services
    env = _env(loaded, "source-shop")
    assert urlsplit(env["SHOP_DSN"]).password == s["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-s3cret"
    assert env["INVENTORY_PASSWORD"] == s["mysql"]["environment"]["MYSQL_PASSWORD"] == "my-s3cret"
    assert s["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"] == "root-s3cret"
    assert env["AWS_ACCESS_KEY_ID"] == s["minio"]["environment"]["MINIO_ROOT_USER"] == s["minio-init"]["environment"]["MINIO_ROOT_USER"] == "minio-user"
    assert env["AWS_SECRET_ACCESS_KEY"] == s["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "minio-s3cret"
    assert s["minio-init"]["environment"]["MINIO_ROOT_PASSWORD"] == "minio-s3cret"


def test_postgres_is_ready_for_logical_replication(compose: Loaded) -> None:
    pg = compose.services["postgres"]
    assert image_tag(pg["image"]).split(".")[0] in ("15", "16")
    settings = dict(a.split("=", 1) for a in pg["command"] if "=" in a)
    assert pg["command"][0] == "postgres"
    assert settings["wal_level"] == "logical"
    # one slot per postgres source, plus the temporary one that snapshots tables added later
    assert int(settings["max_replication_slots"]) >= 2 and int(settings["max_wal_senders"]) >= 2
    dsn = urlsplit(_env(compose, "source-shop")["SHOP_DSN"])
    assert (dsn.hostname, dsn.port or 5432, dsn.path.lstrip("/")) == ("postgres", 5432, pg["environment"]["POSTGRES_DB"])
    assert dsn.username == "postgres"  # the image's superuser: REPLICATION, and owner for the publication
    assert "pg_isready" in pg["healthcheck"]["test"]


def _mysql_flags(command: list[str]) -> dict[str, str]:
    flags = {}
    for arg in command:
        m = re.fullmatch(r"--([a-z-_]+)(?:=(.*))?", arg)
        assert m, f"unexpected mysqld argument {arg!r}"
        flags[m.group(1).replace("-", "_")] = m.group(2) if m.group(2) is not None else "ON"
    return flags


def _mysql_variables(command: list[str]) -> dict[str, str]:
    """The server variables the command line sets, as setup_problem reads them (log_bin: ON/OFF)."""
    flags = _mysql_flags(command)
    return {**flags, "log_bin": "ON" if flags.get("log_bin") else "OFF"}


def _grants(sql: str) -> tuple[set[str], str]:
    text = re.sub(r"--[^\n]*", "", sql)
    m = re.search(r"GRANT\s+(.+?)\s+ON\s+\*\.\*\s+TO\s+'([^']+)'@'%'\s*;", text, re.S | re.I)
    assert m, "deploy/mysql/lakeward.sql has no GRANT ... ON *.* TO '<user>'@'%'"
    return {p.strip().upper() for p in m.group(1).split(",")}, m.group(2)


def test_mysql_passes_the_sources_startup_check(compose: Loaded) -> None:
    """The server settings on the mysql command line and the grants of deploy/mysql/lakeward.sql, put
    through the MySQL source's own check (connectors/mysql/catalog.py: setup_problem)."""
    from lakeward.connectors.mysql.catalog import setup_problem

    my = compose.services["mysql"]
    version = image_tag(my["image"])
    assert re.match(r"8\.(0|4)\.\d+$", version), version
    flags = _mysql_flags(my["command"])
    var = _mysql_variables(my["command"])
    privs, user = _grants(MYSQL_INIT.read_text())
    env = _env(compose, "source-inventory")
    assert user == env["INVENTORY_USER"] == my["environment"]["MYSQL_USER"]
    assert env["INVENTORY_PASSWORD"] == my["environment"]["MYSQL_PASSWORD"]
    assert (env["INVENTORY_HOST"], env["INVENTORY_PORT"]) == ("mysql", "3306")
    assert setup_problem(f"MySQL at {env['INVENTORY_HOST']}:{env['INVENTORY_PORT']}", "mysql", version, var, privs, user) is None
    assert "SELECT" in privs  # the snapshot reads the tables
    # resume by GTID needs gtid_mode=ON, which needs enforce_gtid_consistency=ON
    assert flags["gtid_mode"] == "ON" and flags["enforce_gtid_consistency"] == "ON"
    assert int(flags["server_id"]) >= 1
    # the demo database the loadgen writes is the one the user owns (MYSQL_DATABASE) and the source captures
    assert my["environment"]["MYSQL_DATABASE"] == "inventory"
    init = [v for v in my["volumes"] if v["target"].startswith("/docker-entrypoint-initdb.d/")]
    assert [(Path(v["source"]), v["target"].endswith(".sql"), v.get("read_only")) for v in init] == [(MYSQL_INIT, True, True)]
    assert "mysqladmin ping" in " ".join(my["healthcheck"]["test"])


def test_the_grants_check_is_not_vacuous(compose: Loaded) -> None:
    from lakeward.connectors.mysql.catalog import setup_problem

    privs, user = _grants(MYSQL_INIT.read_text())
    var = _mysql_variables(compose.services["mysql"]["command"])
    assert "RELOAD" in (setup_problem("MySQL at mysql:3306", "mysql", "8.4.3", var, privs - {"RELOAD"}, user) or "")
    assert "binlog_row_metadata" in (setup_problem("MySQL at mysql:3306", "mysql", "8.4.3",
                                                   {**var, "binlog_row_metadata": "MINIMAL"}, privs, user) or "")


def test_the_lake_is_the_bucket_minio_init_creates(compose: Loaded) -> None:
    env = _env(compose, "sink-lake")
    lake = urlsplit(env["LAKEWARD_LAKE"])
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    assert lake.scheme == "s3"
    assert endpoint.hostname == "minio" and endpoint.port == 9000 and endpoint.scheme == "http"
    assert env["AWS_ALLOW_HTTP"] == "true"
    script = " ".join(compose.services["minio-init"]["command"])
    assert re.search(rf"mc mb --ignore-existing \w+/{re.escape(lake.hostname)}\b", script), script
    assert "http://minio:9000" in script
    assert "ready" in compose.services["minio"]["healthcheck"]["test"]


def test_the_broker_listeners(compose: Loaded) -> None:
    rp = compose.services["redpanda"]
    args = dict(a[2:].split("=", 1) for a in rp["command"] if a.startswith("--") and "=" in a)
    advertised = dict(item.split("://", 1) for item in args["advertise-kafka-addr"].split(","))
    listeners = dict(item.split("://", 1) for item in args["kafka-addr"].split(","))
    broker = _env(compose, "source-shop")["LAKEWARD_BROKER"]
    assert advertised["internal"] == broker == "redpanda:9092"
    assert compose.services["console"]["environment"]["KAFKA_BROKERS"] == broker
    assert listeners["internal"].endswith(":9092")
    # the external listener is the one published on the host, advertised as that host address
    host_port = next(iter(PORTS["redpanda"]))
    assert listeners["external"].endswith(f":{host_port[2]}")
    assert advertised["external"] == f"{host_port[0]}:{host_port[1]}"
    assert "rpk cluster health" in " ".join(rp["healthcheck"]["test"])


# --- the Dockerfile ---------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instr, _, args = full.partition(" ")
        out.append((instr.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr, args in instructions:
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args))
    return stages


def test_dockerfile_base_user_entrypoint_healthcheck(dockerfile: list[tuple[str, str]], compose: Loaded) -> None:
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in dockerfile if i == "ARG" and "=" in a}
    stages = _stages(dockerfile)
    assert stages, "no FROM"
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?", image), image
    final = stages[-1]
    kinds = [i for i, _ in final]
    # non-root, set before the entrypoint, with a created user
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    assert any(i == "RUN" and "useradd" in a and users[-1] in a for i, a in final)
    assert exec_form(next(a for i, a in final if i == "ENTRYPOINT")) == ["lakeward"]
    # the healthcheck: python (no curl in slim) against /healthz on LAKEWARD_METRICS_PORT, as in compose
    hc = next(a for i, a in final if i == "HEALTHCHECK")
    options, _, cmd = hc.partition(" CMD ")
    check = exec_form(cmd.strip())
    assert check[0] == "python" and "/healthz" in check[-1] and "LAKEWARD_METRICS_PORT" in check[-1]
    assert {o.split("=")[0] for o in options.split()} >= {"--interval", "--timeout", "--start-period", "--retries"}
    for worker in WORKERS:
        assert compose.services[worker]["healthcheck"]["test"] == ["CMD", *check], worker
    env = " ".join(a for i, a in final if i == "ENV")
    assert f"LAKEWARD_CONFIG={CONFIG_IN_CONTAINER}" in env
    assert "LAKEWARD_METRICS_PORT=9464" in env
    assert "9464" in [a for i, a in final if i == "EXPOSE"]


def test_dockerfile_installs_the_package_from_the_repository(dockerfile: list[tuple[str, str]]) -> None:
    runs = [a for i, a in dockerfile if i == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert installs, "no pip install"
    workdirs = [a for i, a in dockerfile if i == "WORKDIR"]
    assert any(re.search(rf"pip install (\S+ )*{re.escape(w)}( |$)", r) for r in installs for w in workdirs), installs
    assert not any("-e " in r or "--editable" in r for r in installs), "the image must not use an editable install"
    # every package root of pyproject.toml is copied into the build
    copied = set(_copy_sources(dockerfile))
    roots = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert roots | {"pyproject.toml", "README.md"} <= copied, copied


def _copy_sources(dockerfile: list[tuple[str, str]]) -> list[str]:
    out = []
    for instr, args in dockerfile:
        if instr in ("COPY", "ADD") and not args.startswith("--from"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            out += parts[:-1]
    return out


# --- .dockerignore -----------------------------------------------------------------------------------

def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(.*/)?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out += pattern[i:j + 1]
            i = j + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip().strip("/")
        rx = _ignore_regex(pattern)
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def ignore_rules() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "lake/shop/_delta_log/0.json", "demo/lake/x",
                                  ".lake/x", "core/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/x",
                                  "lakeward.egg-info/PKG-INFO", "tests/deploy/test_compose.py", "deploy/.env",
                                  "benchmarks/results/x.json"])
def test_dockerignore_keeps_out(path: str, ignore_rules: list[str]) -> None:
    assert dockerignored(path, ignore_rules)


def test_dockerignore_keeps_what_the_image_is_built_from(dockerfile: list[tuple[str, str]], ignore_rules: list[str]) -> None:
    for src in _copy_sources(dockerfile):
        path = REPO / src
        assert path.exists(), f"COPY {src}: not in the repository"
        assert not dockerignored(src, ignore_rules), f"COPY {src}: excluded by .dockerignore"
        for f in (path.rglob("*.py") if path.is_dir() else []):
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert not dockerignored(rel, ignore_rules), f"{rel}: excluded by .dockerignore"


def test_the_image_gets_every_module_and_the_entry_point(dockerfile: list[tuple[str, str]], ignore_rules: list[str],
                                                         tmp_path: Path) -> None:
    """Do what the build stage does, without docker: copy the COPY sources (filtered by .dockerignore)
    into a fresh /src and build the wheel `pip install /src` would install; every module of the
    package roots must be in it, and the `lakeward` console script."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in _copy_sources(dockerfile):
        if name.startswith("deploy/"):
            continue  # the runtime stage's config file, not part of the package
        origin = REPO / name
        if origin.is_dir():
            for f in origin.rglob("*"):
                rel = f.relative_to(REPO).as_posix()
                if f.is_file() and not dockerignored(rel, ignore_rules):
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, src / rel)
        else:
            shutil.copy2(origin, src / name)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                           "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("lakeward-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert re.search(r"^lakeward\s*=\s*lakeward\.core\.cli:main$", entry_points, re.M), entry_points
    missing = []
    for package, root in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for f in sorted((src / root).rglob("*.py")):
            rel = f.relative_to(src / root)
            if "__pycache__" in rel.parts:
                continue
            # a module of a package: every directory between the root and it has an __init__.py
            if all((src / root / Path(*rel.parts[:n]) / "__init__.py").exists() for n in range(len(rel.parts))):
                target = f"{package.replace('.', '/')}/{rel.as_posix()}"
                if target not in names:
                    missing.append(f"{root}/{rel.as_posix()} -> {target}")
    assert not missing, ("modules that `pip install /src` leaves out of the image (add their packages to "
                         "[tool.setuptools] packages in pyproject.toml):\n  " + "\n  ".join(missing))


# --- the healthcheck command itself ------------------------------------------------------------------

class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"no")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [200, 503, None])
def test_the_healthcheck_command(compose: Loaded, status: int | None) -> None:
    """Run the workers' healthcheck (the python one-liner) against a /healthz that answers 200, 503, or
    nothing: only 200 passes."""
    test = compose.services["sink-lake"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    handler = type("Handler", (_Health,), {"status": status or 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    if status is None:
        server.server_close()  # nothing listens on the port
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run([sys.executable, *test[2:]], env=clean_env(LAKEWARD_METRICS_PORT=str(port)),
                              capture_output=True, text=True, timeout=30)
    finally:
        if status is not None:
            server.shutdown()
            server.server_close()
    assert (proc.returncode == 0) == (status == 200), (status, proc.returncode, proc.stderr[-500:])
