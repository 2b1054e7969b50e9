"""Each ``ArrayRecord`` of a message travels as one array: the wire form of every message, both ways.

Flower 1.42 moves a message as a tree of objects, one request per object on every hop (ServerApp to
SuperLink, SuperLink to SuperNode, SuperNode to ClientApp, and back), and each array is two objects (the
array and its chunk). A train request of the tiny model is 48 objects, 44 of them its 22 arrays, and on
loopback receiving one took a SuperNode longer than its training: each object a request through the Fleet
gateway and the SuperLink's HTTP stack and database (docs/deploy.md has the trace). A board on a slow
link pays a round trip per object.

So an ``ArrayRecord`` of several arrays is sent as one: the arrays' serialised bytes, concatenated, in
an ``Array`` of its own type (``PACKED_STYPE``), and beside it a ``ConfigRecord`` ``<name>.packed-layout``
listing each array's key, dtype, shape, serialisation type and byte count. Unpacking rebuilds every
``Array`` from exactly the fields it was sent with, so the handlers, the strategies, SecAgg+ and the
server's checks see the message as it was built: nothing a device receives or releases changes, only how
many objects carry it. The server packs what it pushes and unpacks what it pulls (``server/grid_view.py``,
``PackedGrid``); the device unpacks a packed request and packs its reply in ``packed_arrays``, its
outermost mod but one.

What arrives is untrusted, from either side. A layout that is not the list described, names a key twice,
or whose byte counts do not add up to the packed bytes is refused with ``PackingError``; the rebuilt
arrays then meet the same checks as before (their header against their bytes, the model's names and
shapes, NaN), since those never trusted an array's fields either.
"""

from __future__ import annotations

import json

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

PACKED_KEY = "packed"  # the one array of a packed ArrayRecord
PACKED_STYPE = "fl_metamorphosis.packed"  # its serialisation type: arrays' bytes, back to back
LAYOUT_SUFFIX = ".packed-layout"  # ConfigRecord beside it: <record name> + this
LAYOUT_KEY = "layout"  # in that ConfigRecord: JSON, [[key, dtype, shape, stype, bytes], ...]


class PackingError(ValueError):
    """A packed record that cannot be unpacked: the message is malformed."""


def pack(content: RecordDict) -> RecordDict:
    """``content`` with each ArrayRecord of two or more arrays packed into one array (the module's docstring)."""
    packed = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord) and len(record) > 1:
            arrays = list(record.items())
            layout = [[key, a.dtype, list(a.shape), a.stype, len(a.data)] for key, a in arrays]
            blob = b"".join(a.data for _, a in arrays)
            packed[name] = ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE,
                                                          data=blob)})  # fmt: skip
            packed[name + LAYOUT_SUFFIX] = ConfigRecord({LAYOUT_KEY: json.dumps(layout)})
        else:
            packed[name] = record
    return packed


def unpack(content: RecordDict) -> RecordDict:
    """``content`` as it was before ``pack``; a record that was not packed is kept as it is."""
    layouts = {name[: -len(LAYOUT_SUFFIX)]: record for name, record in content.items() if name.endswith(LAYOUT_SUFFIX)}
    unpacked = RecordDict()
    for name, record in content.items():
        if name.endswith(LAYOUT_SUFFIX):
            continue
        unpacked[name] = _unpack_record(name, record, layouts[name]) if name in layouts else record
    missing = sorted(set(layouts) - set(unpacked.keys()))
    if missing:
        raise PackingError(f"a packed layout names record {missing[0]!r}, which the message does not have")
    return unpacked


def _unpack_record(name: str, record, layout_record) -> ArrayRecord:
    if not isinstance(record, ArrayRecord) or list(record.keys()) != [PACKED_KEY]:
        raise PackingError(f"record {name!r} has a packed layout but is not one packed array")
    packed = record[PACKED_KEY]
    if packed.stype != PACKED_STYPE:
        raise PackingError(f"record {name!r}: its array's type is {packed.stype!r}, not {PACKED_STYPE!r}")
    if not isinstance(layout_record, ConfigRecord) or list(layout_record.keys()) != [LAYOUT_KEY]:
        raise PackingError(f"record {name!r}: its layout is not a ConfigRecord of one {LAYOUT_KEY!r}")
    entries = _layout(name, layout_record[LAYOUT_KEY])
    data = packed.data
    if sum(entry[4] for entry in entries) != len(data):
        raise PackingError(f"record {name!r}: its layout's byte counts do not add up to the {len(data)} bytes sent")
    arrays, start = {}, 0
    for key, dtype, shape, stype, size in entries:
        arrays[key] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=bytes(data[start : start + size]))
        start += size
    return ArrayRecord(arrays)


def _layout(name: str, text) -> list[tuple[str, str, list[int], str, int]]:
    try:
        raw = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError) as err:  # RecursionError: a layout nested deeper than Python recurses
        raise PackingError(f"record {name!r}: its layout is not JSON ({type(err).__name__})") from None
    if not isinstance(raw, list) or not raw:
        raise PackingError(f"record {name!r}: its layout is not a non-empty list")
    entries, seen = [], set()
    for entry in raw:
        ok = (
            isinstance(entry, list) and len(entry) == 5
            and isinstance(entry[0], str) and isinstance(entry[1], str) and isinstance(entry[3], str)
            and isinstance(entry[2], list) and all(type(d) is int and d >= 0 for d in entry[2])
            and type(entry[4]) is int and entry[4] >= 0
        )  # fmt: skip
        if not ok:
            raise PackingError(f"record {name!r}: layout entry {str(entry)[:80]} is not [key, dtype, shape, stype, n]")
        if entry[0] in seen:
            raise PackingError(f"record {name!r}: its layout names key {entry[0]!r} twice")
        seen.add(entry[0])
        entries.append(tuple(entry))
    return entries


def is_packed(content: RecordDict) -> bool:
    return any(name.endswith(LAYOUT_SUFFIX) for name in content.keys())


def packed_arrays(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: unpack the request, run the app, and pack its reply if the request came packed (a server
    that does not pack gets its replies as it sends). A request that cannot be unpacked raises
    ``PackingError``, which Flower returns to the server as the reply's error."""
    packed = msg.has_content() and is_packed(msg.content)
    if packed:
        msg.content = unpack(msg.content)
    reply = call_next(msg, context)
    if packed and reply.has_content():
        reply.content = pack(reply.content)
    return reply
