"""S3 lake config: storage option secrets masked (in `lakeward config` and in log lines), the safe
commit default, problems caught before any request, and S3 errors explained."""

from __future__ import annotations

import logging

import pytest

from lakeward.core.config import config_as_dict, parse_config
from lakeward.core.errors import ConfigError, ConnectionFailed, LakeStorageError
from lakeward.core.logs import setup_logging
from lakeward.sinks.delta import s3 as delta_s3

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"


def config(lake: str) -> str:
    return f"""\
lake:
{lake}
sources:
  - name: shop
    type: postgres
    dsn: postgresql://postgres@localhost:5432/shop
    tables: [public.*]
sinks:
  - name: lake
    type: delta
    sources: [shop]
"""


S3_LAKE = f"""\
  uri: s3://bucket/prefix
  storage_options:
    AWS_ENDPOINT_URL: https://s3.example.com
    AWS_ACCESS_KEY_ID: AKIAEXAMPLE
    AWS_SECRET_ACCESS_KEY: {SECRET}
    AWS_SESSION_TOKEN: {TOKEN}
    AWS_ALLOW_HTTP: false
"""


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_CONDITIONAL_PUT", "AWS_S3_LOCKING_PROVIDER", "AWS_COPY_IF_NOT_EXISTS"):
        monkeypatch.delenv(var, raising=False)


def test_storage_option_secrets_are_masked_in_config_output():
    shown = config_as_dict(parse_config(config(S3_LAKE)))["lake"]["storage_options"]
    assert shown["AWS_SECRET_ACCESS_KEY"] == "***" and shown["AWS_SESSION_TOKEN"] == "***"
    assert shown["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE", "a key id names the key; it is no secret"
    assert shown["AWS_ENDPOINT_URL"] == "https://s3.example.com" and shown["AWS_ALLOW_HTTP"] == "false"
    assert SECRET not in str(config_as_dict(parse_config(config(S3_LAKE))))


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_storage_option_secrets_never_reach_a_log_line(capsys, restore_logging):
    parse_config(config(S3_LAKE))
    setup_logging("INFO", "text")
    log = logging.getLogger("lakeward.test")
    log.warning("request failed: signing with %s and %s", SECRET, TOKEN)
    try:
        raise OSError(f"Generic S3 error: bad secret {SECRET}")
    except OSError:
        log.exception("write failed")
    setup_logging("INFO", "json")
    log.error("again: %s", SECRET)
    err = capsys.readouterr().err
    assert SECRET not in err and TOKEN not in err
    assert "signing with *** and ***" in err and "bad secret ***" in err


def test_s3_lake_gets_conditional_put_unless_a_commit_protocol_is_set(monkeypatch):
    lake = parse_config(config(S3_LAKE)).lake
    assert lake.storage_options["aws_conditional_put"] == "etag"
    locked = S3_LAKE + "    AWS_S3_LOCKING_PROVIDER: dynamodb\n"
    assert "aws_conditional_put" not in parse_config(config(locked)).lake.storage_options
    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "etag")  # chosen in the environment: left to delta-rs
    assert "aws_conditional_put" not in parse_config(config(S3_LAKE)).lake.storage_options
    assert parse_config(config("  uri: ./lake\n")).lake.storage_options == {}, "local lakes are left alone"


def test_problems_found_without_a_request():
    with pytest.raises(ConfigError, match=r"lake: Value error, lake.uri 's3://' names no bucket"):
        parse_config(config("  uri: s3://\n"))
    plain_http = "  uri: s3://b/p\n  storage_options:\n    AWS_ENDPOINT_URL: http://127.0.0.1:9000\n"
    with pytest.raises(ConfigError, match=r"endpoint http://127.0.0.1:9000 is plain HTTP.*set AWS_ALLOW_HTTP: 'true'"):
        parse_config(config(plain_http))
    assert parse_config(config(plain_http + "    AWS_ALLOW_HTTP: true\n")).lake.storage_options["AWS_ALLOW_HTTP"] == "true"
    with pytest.raises(ConfigError, match=r"aws_conditional_put is disabled and no AWS_S3_LOCKING_PROVIDER: dynamodb"):
        parse_config(config("  uri: s3://b/p\n  storage_options:\n    aws_conditional_put: disabled\n"))


# What delta-rs 1.6 raised against MinIO (colours and all), shortened.
_NO_BUCKET = ("Generic S3 error\n  \x1b[31m↳\x1b[0m Error performing list request\n  \x1b[31m↳\x1b[0m 404 Not Found\n"
              "  \x1b[31m↳\x1b[0m <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>")
_BAD_KEY = ("Generic S3 error\n  \x1b[31m↳\x1b[0m 403 Forbidden\n  \x1b[31m↳\x1b[0m <Error><Code>SignatureDoesNotMatch</Code>"
            "<Message>The request signature we calculated does not match</Message>")
_REFUSED = ("Generic S3 error\n  \x1b[31m↳\x1b[0m Error performing GET http://127.0.0.1:1/b in 5s, after 10 retries - HTTP error\n"
            "  \x1b[31m↳\x1b[0m error sending request\n  \x1b[31m↳\x1b[0m tcp connect error\n  \x1b[31m↳\x1b[0m Connection refused (os error 111)\n")


def test_s3_errors_name_endpoint_bucket_and_fix():
    opts = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    err = delta_s3.explain(OSError(_NO_BUCKET), "s3://data/lake", opts)
    assert isinstance(err, LakeStorageError) and not err.retriable
    assert "bucket 'data' does not exist on http://127.0.0.1:9000; create it" in str(err)
    err = delta_s3.explain(OSError(_BAD_KEY), "s3://data/lake", opts)
    assert isinstance(err, LakeStorageError)
    assert "rejected the credentials for bucket 'data' (SignatureDoesNotMatch); set AWS_ACCESS_KEY_ID" in str(err)
    err = delta_s3.explain(OSError(_REFUSED), "s3://data/lake", {"endpoint": "http://127.0.0.1:1"})
    assert isinstance(err, ConnectionFailed) and err.retriable
    assert "cannot reach the S3 endpoint http://127.0.0.1:1 (Connection refused (os error 111))" in str(err)
    assert "\x1b" not in str(err)
    assert delta_s3.explain(OSError("disk full"), "s3://data/lake", opts) is None
