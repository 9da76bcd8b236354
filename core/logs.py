"""Logging setup: human-readable lines by default, JSON lines with `--log-format json`.

Every record passes through a filter that masks passwords in DSNs and URLs and every secret value
of the loaded config (S3 keys ...), so a secret that slips into an exception message never reaches the log.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from lakeward.core.config import mask_text


class _MaskSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # the text formatter prints exc_text when set: a traceback quoting a secret is masked too
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = mask_text(self.formatException(record.exc_info))
        return orjson.dumps(doc).decode()


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time: while rich shows progress bars it swaps in a
    proxy that prints each log line above the bars instead of through them."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(_CurrentStderr())
    handler.addFilter(_MaskSecrets())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every rebalance and metadata refresh at INFO: keep only its warnings.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
