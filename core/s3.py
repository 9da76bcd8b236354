"""S3 lakes: delta-rs storage options with a safe commit default, checks, and storage errors turned
into messages that name the endpoint, the bucket and the fix.

delta-rs (object_store) takes an option from `lake.storage_options` first (any case, any of its
aliases) and from the environment second; `option` looks options up the same way, so what Lakeward
checks is what delta-rs uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from lakeward.core.errors import ConnectionFailed, LakeStorageError, LakewardError

SCHEMES = ("s3://", "s3a://")

# object_store's names of each option, lower case; the `aws_*` ones are read from the environment too.
ENDPOINT = ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint")
ALLOW_HTTP = ("aws_allow_http", "allow_http")
CONDITIONAL_PUT = ("aws_conditional_put", "conditional_put")
COPY_IF_NOT_EXISTS = ("aws_copy_if_not_exists", "copy_if_not_exists")
LOCKING_PROVIDER = ("aws_s3_locking_provider",)

# The start-up check wants a quick verdict; object_store's default (10 retries, ~5 s against a
# closed port) stays for the workers, whose errors are retried anyway.
_CHECK_RETRIES = {"max_retries": "2", "retry_timeout": "10s"}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
               "InvalidSecurity", "AllAccessDisabled")
_UNREACHABLE = re.compile(r"error sending request|tcp connect error|dns error|connection refused|timed out|connection reset", re.I)


def is_s3(uri: str) -> bool:
    return uri.lower().startswith(SCHEMES)


def bucket(uri: str) -> str:
    return urlsplit(uri).netloc


def option(options: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The value delta-rs will use for an option known by `names`: the config's, else the environment's."""
    lower = {k.lower(): v for k, v in options.items()}
    for name in names:
        if name in lower:
            return lower[name]
    for name in names:
        if name.startswith("aws_") and (value := os.environ.get(name.upper())) is not None:
            return value
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def endpoint(options: Mapping[str, str]) -> str:
    return option(options, ENDPOINT) or "AWS S3 (no AWS_ENDPOINT_URL set)"


def with_commit_default(options: dict[str, Any]) -> dict[str, Any]:
    """`options` plus `aws_conditional_put: etag`, unless a commit protocol is already chosen.

    Exactly-once rests on Delta's optimistic concurrency: of two writers committing the same table
    version (a rebalance, a replay, a zombie worker) exactly one may win, the other gets
    CommitFailedError and re-reads the txn (fencing). On S3 only a create-if-absent PUT
    (If-None-Match, "conditional put": AWS S3 since 2024, MinIO, R2 ...) or the DynamoDB lock gives
    that. object_store in delta-rs 1.x happens to default to it; saying so explicitly keeps the
    guarantee from hanging on a library default.
    """
    if option(options, CONDITIONAL_PUT + COPY_IF_NOT_EXISTS + LOCKING_PROVIDER) is not None:
        return options
    return {**options, "aws_conditional_put": "etag"}


def problems(uri: str, options: Mapping[str, str]) -> list[str]:
    """Mistakes in an S3 lake's config that show without asking the server."""
    out = []
    if not bucket(uri):
        out.append(f"lake.uri {uri!r} names no bucket; write s3://BUCKET/PREFIX")
    put = option(options, CONDITIONAL_PUT)
    locked = (option(options, LOCKING_PROVIDER) or "").lower() == "dynamodb" or option(options, COPY_IF_NOT_EXISTS) is not None
    if put is not None and put.strip().lower() == "disabled" and not locked:
        out.append("lake.storage_options: aws_conditional_put is disabled and no AWS_S3_LOCKING_PROVIDER: dynamodb is set; "
                   "Delta commits on S3 need one of them so that two writers never both commit a version. Remove "
                   "aws_conditional_put (Lakeward then uses etag) or configure the DynamoDB lock")
    ep = option(options, ENDPOINT)
    if ep and ep.lower().startswith("http://") and not _truthy(option(options, ALLOW_HTTP)):
        out.append(f"lake.storage_options: the S3 endpoint {ep} is plain HTTP, which delta-rs refuses unless allowed; "
                   "set AWS_ALLOW_HTTP: 'true' (in lake.storage_options or the environment) or use https")
    return out


def _last_cause(text: str) -> str:
    """The innermost line of delta-rs' error chain ("Connection refused (os error 111)")."""
    lines = [line.strip().lstrip("↳").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else text


def explain(exc: BaseException, uri: str, options: Mapping[str, str]) -> LakewardError | None:
    """A Lakeward error naming endpoint, bucket and fix for a storage error we recognise; else None."""
    text = _ANSI.sub("", str(exc))
    found = _S3_CODE.search(text)
    code = found.group(1) if found else None
    where, b = endpoint(options), bucket(uri)
    if code == "NoSuchBucket":
        return LakeStorageError(f"lake {uri}: bucket {b!r} does not exist on {where}; create it (for example "
                                f"`aws s3 mb s3://{b}`, with --endpoint-url for a non-AWS server) or point lake.uri at an existing bucket")
    if code in _AUTH_CODES or "403 Forbidden" in text or "lacked the necessary privileges" in text:
        return LakeStorageError(f"lake {uri}: {where} rejected the credentials for bucket {b!r} ({code or '403 Forbidden'}); "
                                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN for temporary keys), in "
                                f"lake.storage_options or the environment, to a key that may list, read and write s3://{b}/")
    if "URL scheme is not allowed" in text:
        return LakeStorageError(f"lake {uri}: the S3 endpoint {where} is plain HTTP; set lake.storage_options.AWS_ALLOW_HTTP: 'true' or use https")
    if _UNREACHABLE.search(text):
        return ConnectionFailed(f"lake {uri}: cannot reach the S3 endpoint {where} ({_last_cause(text)}); check that the "
                                "server is up and that AWS_ENDPOINT_URL (lake.storage_options or the environment) is right")
    return None


@contextmanager
def storage_errors(uri: str, options: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a recognised S3 error as the Lakeward error that explains it; others pass unchanged."""
    try:
        yield
    except LakewardError:
        raise
    except Exception as e:
        err = explain(e, uri, options)
        if err is None:
            raise
        raise err from e


def filesystem(uri: str, options: Mapping[str, str]) -> Any:
    """A pyarrow filesystem rooted at `uri`, backed by delta-rs' own object store: the same options,
    environment fallbacks and credential chain as the Delta reads and writes."""
    from deltalake.fs import DeltaStorageHandler
    from pyarrow.fs import PyFileSystem

    return PyFileSystem(DeltaStorageHandler(uri.rstrip("/"), dict(options)))


def check(uri: str, options: Mapping[str, str]) -> None:
    """List the lake's root once (blocking): a missing bucket, rejected credentials or an unreachable
    endpoint raise LakeStorageError / ConnectionFailed naming the endpoint, the bucket and the fix."""
    from pyarrow.fs import FileSelector

    with storage_errors(uri, options):
        filesystem(uri, {**options, **_CHECK_RETRIES}).get_file_info(FileSelector("", allow_not_found=True))
