"""S3 lakes in the config: delta-rs storage options with a safe commit default, and the checks of
`lake.storage_options` (the errors the object store raises are lakeward.sinks.delta.s3's).

delta-rs (object_store) takes an option from `lake.storage_options` first (any case, any of its
aliases) and from the environment second; `option` looks options up the same way, so what Lakeward
checks is what delta-rs uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

SCHEMES = ("s3://", "s3a://")

# object_store's names of each option, lower case; the `aws_*` ones are read from the environment too.
ENDPOINT = ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint")
ALLOW_HTTP = ("aws_allow_http", "allow_http")
CONDITIONAL_PUT = ("aws_conditional_put", "conditional_put")
COPY_IF_NOT_EXISTS = ("aws_copy_if_not_exists", "copy_if_not_exists")
LOCKING_PROVIDER = ("aws_s3_locking_provider",)


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
