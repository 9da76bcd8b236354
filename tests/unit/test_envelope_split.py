"""envelopes.read cuts `before` and `after` out of the envelopes in C (`_records.split`) and has the
JSON reader parse only those; it must give exactly what reading the whole envelopes gives
(`read_whole`), or give up and read them whole. Both are run here on the same envelopes."""

from __future__ import annotations

import pytest

from lakeward.sinks.delta import envelopes
from lakeward.sinks.delta.fetch import native

pytestmark = pytest.mark.skipif(native is None, reason="the C extension is not built (no C compiler at install)")

AFTER = {"id": "long", "n": "integer", "s": "string", "amount": "decimal(12,2)", "at": "timestamp", "flag": "boolean",
         "x": "double", "b": "binary", "tags": "array<string>", "source": "string", "op": "string"}
BEFORE = {"id": "long"}
SRC = b'"source":{"version":"0.1.0","connector":"postgresql","name":"shop","ts_ms":1764547200000,"snapshot":"false","txId":901,"lsn":12}'


def env(after: bytes = b'{"id":1,"n":2,"s":"a","flag":true}', before: bytes = b"null", op: bytes = b'"c"', source: bytes = SRC,
        tail: bytes = b',"ts_ms":1764547200123') -> bytes:
    return b'{"before":' + before + b',"after":' + after + b"," + source + b',"op":' + op + tail + b"}"


# Envelopes each of which the C scan either cuts exactly or gives up on
FAMILY = {
    "insert": [env()],
    "every type": [env(b'{"id":9223372036854775807,"n":-5,"s":"q\\"uote\\\\ \\u00e9 \xc3\xa9","amount":"12.50","at":"2024-01-02T03:04:05.123456Z",'
                       b'"flag":false,"x":1.5e-3,"b":"AAEC","tags":["a",null,"b"]}')],
    "brackets in strings": [env(b'{"id":1,"s":"}{\\\"]","tags":["]","}"]}', before=b'{"id":1,"s":"{"}')],
    "columns named source and op": [env(b'{"id":1,"source":"x","op":"y"}'), env(b'{"id":2,"source":null}')],
    "nulls and absent parts": [env(after=b"null", before=b'{"id":3}', op=b'"d"'), env(op=b"null"),
                               b'{"op":"c","after":{"id":4}}', b'{"after":{"id":5},"op":"r","source":null}', b"{}"],
    "source values": [env(source=b'"source":{"ts_ms":null,"txId":null}'), env(source=b'"source":{}'),
                      env(source=b'"source":{"nested":{"a":[1,{"b":null}]},"ts_ms":-1,"txId":0}'),
                      env(source=b'"source":{"db":"caf\xc3\xa9","ts_ms":1}')],  # non-ASCII: read whole
    "formatting": [b' { "op" : "u" ,\t"after" : { "id" : 6 } , "before" : { "id" : 6 } , "source" : { "ts_ms" : 7 } } ',
                   b'{"source":{"txId":5,"ts_ms":6},"after":{"id":7},"op":"c","before":null}'],
    "extra keys": [env(tail=b',"ts_ms":1,"transaction":{"id":"x"},"extra":[true,false,null,-0.5e+10]')],
    "numbers the scan does not take": [env(source=b'"source":{"ts_ms":1.0}'), env(source=b'"source":{"ts_ms":1234567890123456789012}'),
                                       env(source=b'"source":{"txId":"7"}')],
    "duplicate keys": [b'{"op":"c","op":"u","after":{"id":1}}', b'{"op":"c","after":{"id":1},"after":{"id":2}}',
                       env(source=b'"source":{"ts_ms":1,"ts_ms":2}')],
    "kinds the reader refuses": [env(after=b'{"id":"one"}'), env(op=b"1"), env(after=b"[1]"), env(before=b'"x"'),
                                 env(source=b'"source":"x"')],
    "malformed": [env()[:-1], env() + b"{}", b"", b"[]", b'{"op":"c"', env(after=b'{"id":1,}'), env(tail=b',"x":tru'),
                  env(tail=b',"x":"\\q"'), env(tail=b',"x":01'), env(after=b'{"id":1}\n')],
    "invalid UTF-8": [env(b'{"id":1,"s":"\xff"}'), env(b'{"id":1,"s":"\xc3"}')],
    "escaped keys": [b'{"o\\u0070":"c","after":{"id":1}}'],
}


def cases():
    """Each envelope alone and among inserts (the scan gives up on a whole batch at once), and each
    family as one batch."""
    for name, values in FAMILY.items():
        for i, value in enumerate(values):
            yield pytest.param([value], id=f"{name} {i}")
            yield pytest.param([env(), value, env(b'{"id":99}')], id=f"{name} {i}, among inserts")
        yield pytest.param(values, id=f"{name}, all")


CUT = ["insert", "every type", "brackets in strings", "columns named source and op", "nulls and absent parts", "formatting", "extra keys"]


@pytest.mark.parametrize("values", list(cases()))
@pytest.mark.parametrize("before", [BEFORE, {}])
def test_cutting_out_before_and_after_reads_what_the_whole_envelopes_read(values, before):
    whole = envelopes.read_whole(values, AFTER, before)
    cut = envelopes.read(values, AFTER, before)
    if whole is None:
        assert cut is None
    else:
        assert cut is not None and cut.schema == whole.schema
        assert cut.equals(whole)  # byte for byte (the reader takes invalid UTF-8 as it is, both ways)


@pytest.mark.parametrize("family", CUT)
def test_the_scan_cuts_these_envelopes(family):
    assert native.split(FAMILY[family], True, True) is not None
    assert native.split(FAMILY["source values"][:3], True, True) is not None


@pytest.mark.parametrize("value", [env(source=b'"source":{"db":"caf\xc3\xa9"}'), env(tail=b',\n"x":1'), b'{"o\\u0070":"c"}',
                                   b'{"op":"c","op":"c"}', env()[:-1]])
def test_the_scan_gives_up_on_what_it_is_not_sure_of(value):
    assert native.split([env(), value], True, True) is None


def test_without_the_c_extension_the_envelopes_are_read_whole(monkeypatch):
    monkeypatch.setattr(envelopes, "native", None)
    values = FAMILY["every type"] + FAMILY["nulls and absent parts"]
    assert envelopes.read(values, AFTER, BEFORE).equals(envelopes.read_whole(values, AFTER, BEFORE))
