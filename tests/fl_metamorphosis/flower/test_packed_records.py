"""Each ArrayRecord travels as one array: the message unpacks to exactly what was built, in a few objects,
and a packed record that does not add up is refused, on the device and on the server."""

import json

import numpy as np
import pytest
from device_messages import device_context, fed_cfg, train_message
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from inprocess_grid import InProcessGrid

from clients.client_app import app as client_app
from fl_metamorphosis.flower.packed_records import (
    LAYOUT_KEY,
    LAYOUT_SUFFIX,
    PACKED_KEY,
    PackingError,
    is_packed,
    pack,
    unpack,
)
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.privacy.device_policy import DevicePolicy
from server.grid_view import PackedGrid
from server.round_loop import run_federated


def _same(a: RecordDict, b: RecordDict) -> None:
    assert list(a.keys()) == list(b.keys())
    for name, record in a.items():
        other = b[name]
        assert type(record) is type(other), name
        if isinstance(record, ArrayRecord):
            assert list(record.keys()) == list(other.keys()), name
            for key, array in record.items():
                twin = other[key]
                assert (array.dtype, array.shape, array.stype, array.data) == (
                    twin.dtype, twin.shape, twin.stype, twin.data,
                ), key  # fmt: skip
        else:
            assert dict(record) == dict(other), name


def test_a_train_request_unpacks_to_what_was_built_in_a_few_objects():
    msg, _ = train_message(fed_cfg())
    packed = Message(metadata=msg.metadata, content=pack(msg.content))
    _same(unpack(packed.content), msg.content)
    # on the wire: one request per object, and each array was two (the array and its chunk)
    assert len(get_all_nested_objects(msg)) > 40
    assert len(get_all_nested_objects(packed)) <= 7


def test_records_of_one_array_or_none_are_sent_as_they_are():
    content = RecordDict({
        "one": ArrayRecord({"x": Array(np.arange(3.0))}),
        "config": ConfigRecord({"k": 1}),
        "metrics": MetricRecord({"m": 0.5}),
    })  # fmt: skip
    _same(pack(content), content)
    _same(unpack(content), content)  # a message of a sender that does not pack is read as it is


def _packed_record(layout, blob=b"\x00" * 8, stype="fl_metamorphosis.packed") -> RecordDict:
    return RecordDict({
        "arrays": ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(blob),), stype=stype, data=blob)}),
        "arrays" + LAYOUT_SUFFIX: ConfigRecord({LAYOUT_KEY: layout if isinstance(layout, str) else json.dumps(layout)}),
    })  # fmt: skip


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (_packed_record([["a", "uint8", [4], "raw", 4], ["b", "uint8", [4], "raw", 5]]), "do not add up"),
        (_packed_record([["a", "uint8", [4], "raw", 4], ["a", "uint8", [4], "raw", 4]]), "names key 'a' twice"),
        (_packed_record([["a", "uint8", [-1], "raw", 8]]), "is not \\[key, dtype, shape, stype, n\\]"),
        (_packed_record([["a", "uint8", [8], "raw"]]), "is not \\[key, dtype, shape, stype, n\\]"),
        (_packed_record("[[not json"), "not JSON"),
        (_packed_record("[" * 100_000 + "]" * 100_000), "not JSON"),  # deeper than Python recurses
        (_packed_record([]), "not a non-empty list"),
        (_packed_record([["a", "uint8", [8], "raw", 8]], stype="numpy.ndarray"), "its array's type"),
        (RecordDict({"gone" + LAYOUT_SUFFIX: ConfigRecord({LAYOUT_KEY: "[]"})}), "does not have"),
    ],
)
def test_a_packed_record_that_does_not_add_up_is_refused_naming_what(content, reason):
    with pytest.raises(PackingError, match=reason):
        unpack(content)


def test_the_device_answers_in_the_form_it_was_asked(tmp_path):
    cfg = fed_cfg()
    msg, _ = train_message(cfg)
    plain = client_app(msg, device_context(tmp_path / "a"))
    msg, _ = train_message(cfg)
    msg.content = pack(msg.content)
    packed = client_app(msg, device_context(tmp_path / "b"))
    assert not is_packed(plain.content) and is_packed(packed.content)
    unpacked = unpack(packed.content)
    assert list(unpacked.keys()) == list(plain.content.keys())
    assert list(unpacked["arrays"].keys()) == list(plain.content["arrays"].keys())


def test_the_device_refuses_a_request_it_cannot_unpack_before_any_handler_runs(tmp_path):
    msg, _ = train_message(fed_cfg())
    msg.content = _packed_record([["a", "uint8", [8], "raw", 9]])
    with pytest.raises(PackingError, match="do not add up"):  # Flower's runtime sends it back as the error
        client_app(msg, device_context(tmp_path))
    assert not (tmp_path / "privacy_state.ckpt").exists()  # nothing trained, nothing spent


def _run(grid, cfg, out):
    run_federated(grid, cfg, out, audit=False)
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(out / "metrics.jsonl")]


@pytest.mark.slow
def test_a_packed_round_gives_the_unpacked_rounds_figures_and_a_bad_packing_is_one_devices_rejection(
    tmp_path, caplog
):
    # seeded device noise: the same run twice gives the same figures, so the wire form is all that differs
    cfg = fed_cfg("federated.rounds=1", 'randomness.source="seeded"')
    policy = DevicePolicy.from_config(cfg)
    plain = _run(InProcessGrid(client_app, 3, tmp_path / "a" / "devices", policy=policy), cfg, tmp_path / "a")
    inner = InProcessGrid(client_app, 3, tmp_path / "b" / "devices", policy=policy)
    packed = _run(PackedGrid(inner), cfg, tmp_path / "b")
    assert packed == plain
    assert any(name.endswith(LAYOUT_SUFFIX) for name in inner.sent[0].content.keys())  # it did travel packed
    features = [m for m in inner.sent if m.metadata.message_type == "query.features"]
    assert len(features) >= 3 and all(m.content is features[0].content for m in features[:3])  # packed once

    def bad_layout(node, reply):  # device 101 sends a layout whose sizes do not add up
        if node == 101 and reply.has_content() and "arrays" + LAYOUT_SUFFIX in reply.content:
            layout = json.loads(reply.content["arrays" + LAYOUT_SUFFIX][LAYOUT_KEY])
            layout[0][4] += 1
            reply.content["arrays" + LAYOUT_SUFFIX] = ConfigRecord({LAYOUT_KEY: json.dumps(layout)})
        return reply

    cfg = fed_cfg("federated.rounds=1", "federated.min_train_devices=2")
    grid = PackedGrid(InProcessGrid(client_app, 3, tmp_path / "c" / "devices", tamper=bad_layout, policy=policy))
    (row,) = _run(grid, cfg, tmp_path / "c")
    assert (row["answered"], row["rejected"], row["aggregated"]) == (2, 1, True)
    assert "rejected reply of node 101: device error: malformed packed arrays" in caplog.text
