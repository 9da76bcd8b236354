"""Config loading: the issue's example file, interpolation, errors with file:line:key, masking."""

from __future__ import annotations

import pytest

from lakeward.core.config import config_as_dict, load_config, parse_config
from lakeward.core.errors import ConfigError

EXAMPLE = """\
broker:
  bootstrap_servers: ${LAKEWARD_BROKER:localhost:9092}
lake:
  uri: ${LAKEWARD_LAKE:./lake}
sources:
  - name: shop
    type: postgres
    dsn: ${SHOP_DSN:postgresql://postgres@localhost:5432/shop}
    tables: [public.*]
sinks:
  - name: lake
    type: delta
    sources: [shop]
    mode: mirror
"""


def test_example_is_accepted_as_written(monkeypatch):
    for var in ("LAKEWARD_BROKER", "LAKEWARD_LAKE", "SHOP_DSN"):
        monkeypatch.delenv(var, raising=False)
    cfg = parse_config(EXAMPLE, "lakeward.yaml")
    assert cfg.broker.bootstrap_servers == "localhost:9092"
    assert cfg.lake.uri == "./lake"
    assert cfg.sources[0].dsn == "postgresql://postgres@localhost:5432/shop"
    assert cfg.sources[0].tables == ["public.*"]
    assert cfg.sinks[0].mode == "mirror" and cfg.sinks[0].sources == ["shop"]


def test_env_overrides_default(monkeypatch):
    monkeypatch.setenv("LAKEWARD_BROKER", "b1:9093,b2:9093")
    assert parse_config(EXAMPLE).broker.bootstrap_servers == "b1:9093,b2:9093"


def test_unset_variable_without_default_is_named(monkeypatch):
    monkeypatch.delenv("NOPE_DSN", raising=False)
    text = EXAMPLE.replace("${SHOP_DSN:postgresql://postgres@localhost:5432/shop}", "${NOPE_DSN}")
    with pytest.raises(ConfigError, match=r"lakeward.yaml:8: environment variable NOPE_DSN is not set"):
        parse_config(text, "lakeward.yaml")


def test_typo_names_file_line_key_and_suggests():
    text = EXAMPLE.replace("    tables: [public.*]", "    tabels: [public.*]")
    with pytest.raises(ConfigError) as e:
        parse_config(text, "lakeward.yaml")
    msg = str(e.value)
    assert "lakeward.yaml:9: sources[0].tabels: unknown key 'tabels'; did you mean 'tables'?" in msg
    assert "lakeward.yaml:6: sources[0].tables: required key is missing" in msg


def test_wrong_type_and_bad_choice():
    text = EXAMPLE.replace("mode: mirror", "mode: mirrror")
    with pytest.raises(ConfigError, match=r"lakeward.yaml:14: sinks\[0\].mode: Input should be 'mirror' or 'changelog'"):
        parse_config(text, "lakeward.yaml")


def test_unknown_plugin_type_and_source_reference():
    with pytest.raises(ConfigError, match=r"sources\[0\].type: unknown type 'postgress'; did you mean 'postgres'\?"):
        parse_config(EXAMPLE.replace("type: postgres", "type: postgress"))
    with pytest.raises(ConfigError, match=r"sinks\[0\].sources\[0\]: no source named 'shopp'; did you mean 'shop'\?"):
        parse_config(EXAMPLE.replace("sources: [shop]", "sources: [shopp]"))


def test_top_level_typo():
    with pytest.raises(ConfigError, match=r":1: brokr: unknown key 'brokr'; did you mean 'broker'\?"):
        parse_config(EXAMPLE.replace("broker:", "brokr:"))


def test_secrets_masked_and_read_from_files(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t\n")
    monkeypatch.setenv("SHOP_DSN", "postgresql://app:hunter2@db:5432/shop")
    text = EXAMPLE.replace("broker:\n", f"broker:\n  sasl_password: ${{file:{secret}}}\n")
    cfg = parse_config(text)
    assert cfg.broker.sasl_password == "s3cr3t"
    shown = str(config_as_dict(cfg))
    assert "hunter2" not in shown and "s3cr3t" not in shown
    assert "postgresql://app:***@db:5432/shop" in shown


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="not found; pass -c FILE or set LAKEWARD_CONFIG"):
        load_config(tmp_path / "absent.yaml")


def test_yaml_syntax_error_has_line():
    with pytest.raises(ConfigError, match=r"x.yaml:3: not valid YAML"):
        parse_config("broker:\n  a: 1\n b: [\n", "x.yaml")
