"""Lake types: the small type vocabulary shared by every connector and sink.

A connector maps each source column type to one lake type (the Delta Lake primitive types plus
`array<T>`); the type travels with the events in the table schema, so the sink never guesses a type
from a JSON value. This module also defines how a value of each lake type is written in the JSON
envelope, and turns a column of such JSON values back into an Arrow array.

JSON encoding per lake type:
  boolean                      true / false
  byte short integer long      JSON integers
  float double                 JSON numbers; "NaN", "Infinity", "-Infinity" as strings
  decimal(p,s)                 a string with the exact digits, e.g. "12.50"
  string                       a string
  binary                       base64 (as Debezium does)
  date                         "2024-01-31"; "infinity" / "-infinity"
  timestamp                    "2024-01-31 12:00:00.123456+00" (UTC); "infinity" / "-infinity"
  timestamp_ntz                "2024-01-31 12:00:00.123456"; "infinity" / "-infinity"
  array<T>                     a JSON array of T's encodings (null elements allowed)
"""

from __future__ import annotations

import re

# The lake's primitive types are Delta Lake's (see the table above); `decimal(p,s)` and `array<T>` are the
# two parameterised ones. Which Arrow type stores each is the Delta sink's business
# (lakeward.sinks.delta.arrow): this module stays free of pyarrow, so the sources never load it.
DECIMAL = re.compile(r"^decimal\((\d+),\s*(-?\d+)\)$")
ARRAY = re.compile(r"^array<(.+)>$")
