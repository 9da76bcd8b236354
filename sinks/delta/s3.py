"""S3 lakes through delta-rs' object store: storage errors turned into messages that name the
endpoint, the bucket and the fix, the lake's pyarrow filesystem, and the start-up check.

The option lookups and config checks are the config's (lakeward.core.s3); this module is the part
that talks to the object store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lakeward.core.errors import ConnectionFailed, LakeStorageError, LakewardError
from lakeward.core.s3 import bucket, endpoint

# The start-up check wants a quick verdict; object_store's default (10 retries, ~5 s against a
# closed port) stays for the workers, whose errors are retried anyway.
_CHECK_RETRIES = {"max_retries": "2", "retry_timeout": "10s"}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")

_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
               "InvalidSecurity", "AllAccessDisabled")

_UNREACHABLE = re.compile(r"error sending request|tcp connect error|dns error|connection refused|timed out|connection reset", re.I)


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
