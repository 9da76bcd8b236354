"""The YAML config: loading, `${VAR}` interpolation, validation with file:line errors, masking.

Plugins (sources and sinks) own their config classes; this module validates the top level and
hands each `sources[i]` / `sinks[i]` mapping to the class the registry names for its `type:`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lakeward.core import s3
from lakeward.core.errors import ConfigError

DEFAULT_CONFIG_FILE = "lakeward.yaml"

# ${VAR}, ${VAR:default}, or ${file:/path/to/secret}
_VAR = re.compile(r"\$\{(file:[^}]+|[^}:]+)(?::([^}]*))?\}")


class Model(BaseModel):
    """Base of every config class: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class BrokerConfig(Model):
    bootstrap_servers: str = "localhost:9092"
    """Comma-separated host:port list of the Kafka-protocol broker (Redpanda or Apache Kafka)."""
    topic_prefix: str = "lakeward"
    """Topics are named `<topic_prefix>.<source>.<schema>.<table>`."""
    replication_factor: int = Field(default=1, ge=1)
    """Replication factor of the topics Lakeward creates (use 3 on a production cluster)."""
    cleanup_policy: Literal["compact", "delete"] = "compact"
    """`compact` keeps the latest event per key forever, so `lakeward replay` can rebuild a table."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to talk to the broker."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism, when security_protocol uses SASL."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: str | None = None
    """SASL password (masked when shown); use `${VAR}` or `${file:/path}`."""


class LakeConfig(Model):
    uri: str = "./lake"
    """Root of the lake: a local path (or `file://`) or `s3://bucket/prefix`; tables live at
    `<uri>/<source>/<schema>/<table>`."""
    storage_options: dict[str, str] = Field(default_factory=dict)
    """Options passed to delta-rs object storage, e.g. for S3 `AWS_ENDPOINT_URL`, `AWS_REGION`,
    `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (secret key and token are
    masked when shown and in logs; use `${VAR}` or `${file:/path}`), `AWS_ALLOW_HTTP: true` for a
    plain-HTTP endpoint. `AWS_*` keys not given here are read from the environment, as delta-rs does.
    An `s3://` lake gets `aws_conditional_put: etag` unless a commit protocol is set: safe concurrent
    Delta commits need it (see docs/operations.md)."""

    @field_validator("storage_options", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        # YAML reads `AWS_ALLOW_HTTP: true` as a bool and a port as an int; delta-rs wants text.
        if isinstance(value, dict):
            return {k: str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else v for k, v in value.items()}
        return value

    @model_validator(mode="before")
    @classmethod
    def _s3_commit_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and s3.is_s3(str(data.get("uri", ""))) and isinstance(data.get("storage_options") or {}, dict):
            data = {**data, "storage_options": s3.with_commit_default(dict(data.get("storage_options") or {}))}
        return data

    @model_validator(mode="after")
    def _s3_problems(self) -> LakeConfig:
        problems = s3.problems(self.uri, self.storage_options) if s3.is_s3(self.uri) else []
        if problems:
            raise ValueError("; ".join(problems))
        return self


class MetricsConfig(Model):
    enabled: bool = True
    """Serve `/metrics` (Prometheus), `/healthz` and `/readyz` over HTTP while `lakeward run` runs."""
    host: str = "127.0.0.1"
    """Address to listen on; `0.0.0.0` lets a Prometheus server on another machine (or container) scrape it."""
    port: int = Field(default=9464, ge=0, le=65535)
    """TCP port; 0 turns the server off. `lakeward run --metrics-port N` (or `$LAKEWARD_METRICS_PORT`) overrides
    it, so that several worker processes on one host each get their own."""


class PluginConfig(Model):
    """Common keys of every source and sink entry."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Unique name; used in topic names, lake paths and consumer group ids."""
    type: str
    """Which plugin runs this entry (for example `postgres` or `delta`)."""


class LakewardConfig(Model):
    """The whole file after validation; `sources` and `sinks` hold plugin config instances."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    """The Kafka-protocol broker every source publishes to and every sink consumes from."""
    lake: LakeConfig = Field(default_factory=LakeConfig)
    """Where the Delta tables live."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """The HTTP endpoint of every `lakeward run` process: Prometheus metrics and health probes."""
    sources: list[Any] = Field(default_factory=list)
    """Databases to capture (`type: postgres` or `type: mysql`)."""
    sinks: list[Any] = Field(default_factory=list)
    """Consumers that write the lake (`type: delta`)."""

    def source(self, name: str) -> Any:
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(f"no source named {name!r}; the config has: {', '.join(s.name for s in self.sources) or 'none'}")

    def sink(self, name: str) -> Any:
        for s in self.sinks:
            if s.name == name:
                return s
        raise ConfigError(f"no sink named {name!r}; the config has: {', '.join(s.name for s in self.sinks) or 'none'}")


# --- loading -----------------------------------------------------------------------------------


@dataclass
class _Located:
    """Python values built from a YAML node tree, with the line of every key path."""

    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)


def _interpolate(text: str, where: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1).strip(), m.group(2)
        if name.startswith("file:"):
            path = Path(name[5:])
            try:
                return path.read_text().strip()
            except OSError as e:
                raise ConfigError(f"{where}: cannot read secret file {path}: {e.strerror}") from None
        value = os.environ.get(name)
        if value is not None:
            return value
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set and has no default; set it or write ${{{name}:default}}")

    return _VAR.sub(repl, text)


def _build(node: yaml.Node, path: tuple[Any, ...], loc: _Located, filename: str) -> Any:
    loc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            loc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), loc, filename)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), loc, filename) for i, item in enumerate(node.value)]
    # Scalars: interpolate first, then let YAML resolve the type of the result (so `port: ${P:5432}` is an int).
    raw = node.value
    if isinstance(node, yaml.ScalarNode) and "${" in raw:
        raw = _interpolate(raw, f"{filename}:{node.start_mark.line + 1}")
        if node.style in ("'", '"'):
            return raw
        return yaml.safe_load(raw) if raw.strip() else raw
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_of(loc: tuple[Any, ...], located: _Located) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in located.lines:
            return located.lines[loc[:n]]
    return None


def _explain(exc: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...], located: _Located, filename: str) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(p for p in err["loc"])
        line = _line_of(loc, located)
        where = f"{filename}:{line}" if line else filename
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, err["loc"][:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown key {loc[-1]!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(sorted(known))}")
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.append(f"{where}: {_fmt_loc(loc)}: {msg}")
    return problems


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, for "did you mean" hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fld = getattr(current, "model_fields", {}).get(part)
        if fld is None:
            return []
        ann = fld.annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}).keys())


def parse_config(text: str, filename: str = "<config>") -> LakewardConfig:
    """Validate a YAML document into a LakewardConfig; raises ConfigError listing every problem."""
    from lakeward.core import registry

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    located = _Located()
    data = _build(root, (), located, filename) if root is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: the config must be a mapping with keys broker, lake, sources, sinks")

    problems: list[str] = []
    plugins: dict[str, list[Any]] = {"sources": [], "sinks": []}
    for section, kinds in (("sources", registry.SOURCE_TYPES), ("sinks", registry.SINK_TYPES)):
        entries = data.get(section) or []
        if not isinstance(entries, list):
            problems.append(f"{filename}:{located.lines.get((section,), 1)}: {section}: must be a list")
            continue
        for i, entry in enumerate(entries):
            entry_path = (section, i)
            line = located.lines.get(entry_path, 1)
            if not isinstance(entry, dict) or "type" not in entry:
                problems.append(f"{filename}:{line}: {section}[{i}]: each entry needs a `type:` (one of {', '.join(kinds)})")
                continue
            kind = entry["type"]
            if kind not in kinds:
                hint = difflib.get_close_matches(str(kind), list(kinds), n=1)
                problems.append(
                    f"{filename}:{located.lines.get(entry_path + ('type',), line)}: {section}[{i}].type: unknown type {kind!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; known types: {', '.join(kinds)}")
                )
                continue
            model = registry.config_class(section, kind)
            try:
                plugins[section].append(model.model_validate(entry))
            except ValidationError as e:
                problems.extend(_explain(e, model, entry_path, located, filename))
    try:
        top = {k: v for k, v in data.items() if k not in ("sources", "sinks")}
        config = LakewardConfig.model_validate({**top, **plugins})
    except ValidationError as e:
        problems.extend(_explain(e, LakewardConfig, (), located, filename))
        config = None
    if not problems and config is not None:
        problems.extend(_cross_check(config, located, filename))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    assert config is not None
    remember_secrets(config.lake.storage_options)  # so that no log line shows them, whatever quotes them
    return config


def _cross_check(config: LakewardConfig, located: _Located, filename: str) -> list[str]:
    problems = []
    for section in ("sources", "sinks"):
        seen: set[str] = set()
        for i, entry in enumerate(getattr(config, section)):
            if entry.name in seen:
                problems.append(f"{filename}:{located.lines.get((section, i, 'name'), 1)}: {section}[{i}].name: duplicate name {entry.name!r}")
            seen.add(entry.name)
    source_names = {s.name for s in config.sources}
    for i, sink in enumerate(config.sinks):
        for j, name in enumerate(getattr(sink, "sources", [])):
            if name not in source_names:
                hint = difflib.get_close_matches(name, list(source_names), n=1)
                problems.append(
                    f"{filename}:{located.lines.get(('sinks', i, 'sources', j), 1)}: sinks[{i}].sources[{j}]: no source named {name!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                )
    return problems


def config_path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path or os.environ.get("LAKEWARD_CONFIG") or DEFAULT_CONFIG_FILE)


def load_config(path: str | os.PathLike[str] | None = None) -> LakewardConfig:
    """Load the config from `path`, else $LAKEWARD_CONFIG, else ./lakeward.yaml."""
    p = config_path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found; pass -c FILE or set LAKEWARD_CONFIG") from None
    return parse_config(text, str(p))


# --- masking -----------------------------------------------------------------------------------

# account_key / sas_key: object-store secrets (Azure account and SAS keys, a GCS service account key).
# An access key *id* (AWS_ACCESS_KEY_ID) names the key and is no secret: shown, so one can tell which key is used.
_SECRET_KEYS = re.compile(r"(password|secret|token|access_key(?!_id)|private_key|credentials|account_key|sas_key)", re.I)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):([^@\s]+)@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.I)

MASK = "***"

_known_secrets: set[str] = set()
"""Secret storage options (S3 keys ...) of every config loaded in this process: masked wherever
they appear in text. Only those: they are long random strings, unlike test passwords such as
`lakeward`, which would mask every topic name in a log line."""
_MIN_SECRET_LEN = 8


def mask_text(text: str) -> str:
    """Mask passwords inside DSNs and URLs (`postgresql://u:pw@h` -> `postgresql://u:***@h`) and every
    known secret value (an S3 secret key quoted in an error message, say)."""
    text = _KV_PASSWORD.sub(rf"\g<1>{MASK}", _URL_PASSWORD.sub(rf"\g<1>:{MASK}@", text))
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def remember_secrets(value: Any, key: str = "") -> None:
    """Record the secret values in plain config data (the keys `masked` hides) for `mask_text`."""
    if isinstance(value, dict):
        for k, v in value.items():
            remember_secrets(v, str(k))
    elif isinstance(value, list):
        for v in value:
            remember_secrets(v, key)
    elif isinstance(value, str) and _SECRET_KEYS.search(key) and len(value) >= _MIN_SECRET_LEN:
        _known_secrets.add(value)


def masked(value: Any, key: str = "") -> Any:
    """A copy of plain data (dicts, lists, scalars) with every secret masked."""
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEYS.search(key) and value:
            return MASK
        return mask_text(value)
    return value


def config_as_dict(config: LakewardConfig) -> dict[str, Any]:
    """The resolved config as plain data, secrets masked: what `lakeward config` prints."""
    return masked(
        {
            "broker": config.broker.model_dump(),
            "lake": config.lake.model_dump(),
            "metrics": config.metrics.model_dump(),
            "sources": [s.model_dump() for s in config.sources],
            "sinks": [s.model_dump() for s in config.sinks],
        }
    )
