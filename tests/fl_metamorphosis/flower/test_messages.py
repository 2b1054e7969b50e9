"""The device protocol: typed replies round-trip, and a reply off the protocol is rejected by name."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord

from fl_metamorphosis.flower.messages import (
    PROTOCOL_VERSION,
    EvaluateReply,
    FeaturesReply,
    MessageError,
    TrainReply,
    from_payload,
    to_payload,
)


def _train(**changes):
    reply = TrainReply(
        device=2,
        num_examples=200,
        train_loss=1.5,
        epsilon=3.2,
        noise_multiplier=1.1,
        sample_rate=1 / 3,
        steps=12,
        round_steps=6,
        grouped=False,
        weights={"generator.w": torch.ones(3, 2), "heads.b": torch.zeros(2)},
    )
    for k, v in changes.items():
        setattr(reply, k, v)
    return reply


def test_the_three_replies_round_trip():
    back = TrainReply.from_record(_train().to_record())
    assert (back.device, back.steps, back.round_steps, back.epsilon, back.declined) == (2, 12, 6, 3.2, None)
    assert np.array_equal(back.weights["generator.w"], np.ones((3, 2), dtype=np.float32))
    declined = TrainReply.from_record(_train(declined="budget spent", weights=None).to_record())
    assert declined.declined == "budget spent" and declined.weights is None
    tasks = {"left": (torch.randn(5, 4), torch.arange(5)), "right": (torch.randn(5, 4), torch.arange(5))}
    features = FeaturesReply.from_record(FeaturesReply(1, 2, 10, tasks).to_record(), ["left", "right"])
    assert features.num_examples == 5 and torch.equal(features.tasks["right"][0], tasks["right"][0])
    evaluated = EvaluateReply.from_record(
        EvaluateReply(1, 50, {"left": 0.9, "right": 0.8}).to_record(), ["left", "right"]
    )
    assert evaluated.accuracy == {"left": 0.9, "right": 0.8}
    record = _train().to_record()
    again = from_payload(to_payload(record))  # what a device keeps on disk to send again
    assert TrainReply.from_record(again).steps == 12
    assert {k: a.data for k, a in again["arrays"].items()} == {k: a.data for k, a in record["arrays"].items()}


def test_a_reply_with_a_missing_or_extra_field_or_record_is_rejected_by_name():
    record = _train().to_record()
    del record["metrics"]["round-steps"]
    with pytest.raises(MessageError, match="train reply: missing field 'round-steps'"):
        TrainReply.from_record(record)
    record = _train().to_record()
    record["metrics"]["boost"] = 10.0
    with pytest.raises(MessageError, match="unexpected field 'boost'"):
        TrainReply.from_record(record)
    record = _train().to_record()
    record["extra"] = ConfigRecord({"x": 1})
    with pytest.raises(MessageError, match="unexpected record 'extra'"):
        TrainReply.from_record(record)
    record = _train().to_record()
    del record["arrays"]
    with pytest.raises(MessageError, match="missing record 'arrays'"):
        TrainReply.from_record(record)
    tasks = {"left": (torch.randn(5, 4), torch.arange(5))}
    with pytest.raises(MessageError, match="missing record 'task.right'"):
        FeaturesReply.from_record(FeaturesReply(1, 2, 10, tasks).to_record(), ["left", "right"])
    record = EvaluateReply(1, 50, {"left": 0.9}).to_record()
    with pytest.raises(MessageError, match="missing field 'accuracy.right'"):
        EvaluateReply.from_record(record, ["left", "right"])


def test_a_reply_of_another_protocol_version_is_rejected():
    record = _train().to_record()
    record["metrics"] = MetricRecord({**record["metrics"], "protocol": PROTOCOL_VERSION + 1})
    with pytest.raises(MessageError, match=f"protocol version {PROTOCOL_VERSION + 1}"):
        TrainReply.from_record(record)


def test_a_features_reply_names_withheld_tasks_and_each_released_tasks_noise():
    tasks = {
        "left": (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)),
        "right": (torch.randn(5, 4), torch.arange(5)),
    }
    reply = FeaturesReply(1, 1, 5, tasks, withheld={"left": "release gate: ..."}, noise={"right": 2.0})
    back = FeaturesReply.from_record(reply.to_record(), ["left", "right"])
    assert back.withheld == {"left": "release gate: ..."} and back.noise == {"right": 2.0} and back.num_examples == 5
    for bad in ({"right": 0.5}, {"right": float("nan")}, {"middle": 2.0}):
        with pytest.raises(MessageError, match="record 'noise'"):
            FeaturesReply.from_record(FeaturesReply(1, 1, 5, tasks, {"left": "x"}, bad).to_record(), ["left", "right"])
    with pytest.raises(MessageError, match="withheld by the release gate"):  # a withheld task must carry no rows
        full = {**tasks, "left": (torch.randn(5, 4), torch.arange(5))}
        FeaturesReply.from_record(FeaturesReply(1, 1, 5, full, {"right": "x"}).to_record(), ["left", "right"])
