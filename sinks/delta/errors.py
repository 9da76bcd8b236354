"""delta-rs' errors read for the retry rule (lakeward.core.retry): which ones a retry may fix.

delta-rs raises a commit conflict or an object-store hiccup (retriable) and a cast or schema error,
an unsupported feature or a protocol violation (the same input fails the same way every time) as
classes that overlap, some of them as a plain Exception: the class decides first, the message second.
"""

from __future__ import annotations

import re

from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)

from lakeward.core.errors import LakewardError
from lakeward.core.retry import register_classifier

_DETERMINISTIC = re.compile(
    r"Cast error|Schema error|Arrow error|SchemaMismatch|Invalid argument|Unsupported|cannot be cast|Cannot merge|"
    r"required '\w+' feature|Invalid table version|Not a Delta table|No files in log segment", re.I)


def deterministic(exc: BaseException) -> bool:
    """A delta-rs error that the same input raises every time (retrying cannot help)."""
    if isinstance(exc, (SchemaMismatchError, DeltaProtocolError, TableNotFoundError)):
        return True
    if isinstance(exc, (CommitFailedError, OSError, LakewardError)):
        return False
    return isinstance(exc, Exception) and bool(_DETERMINISTIC.search(str(exc)))


@register_classifier
def delta_retriable(exc: BaseException) -> bool | None:
    """False for a deterministic delta-rs error, True for any other DeltaError, None for the rest."""
    if deterministic(exc):
        return False
    return True if isinstance(exc, DeltaError) else None
