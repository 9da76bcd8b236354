"""Delta Lake sink (`type: delta`): micro-batches table topics into Delta tables, exactly once.

config.py holds the config class, sink.py the Sink; see lakeward.core.registry.
"""
