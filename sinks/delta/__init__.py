"""Delta Lake sink (`type: delta`): micro-batches table topics into Delta tables, exactly once.

config.py holds the config class, sink.py the Sink; see lakeward.core.registry.
"""

# delta-rs' errors join the retry rule as soon as any part of the sink is imported.
from lakeward.sinks.delta import errors as _errors  # noqa: F401
