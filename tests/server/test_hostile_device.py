"""A device that lies or is broken: every reply field is checked before the server uses it.

Each lie below was seen to hang the server (a NaN noise multiplier spins Opacus' RDP accountant), crash
it (a sample rate of 2.0, features of the wrong width or with labels out of range) or skew it silently
(non-finite heads, a FedAvg weight of 10^15, spending booked to another device, a reply counted twice).
Now each rejects that node's reply, with a log line naming the node and the field, and the round goes
on: a federation in which one device sends every lie in turn ends with the honest devices' results
exactly as if the liar had sent nothing.
"""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.supercore.task_identity import TaskIdentity
from inprocess_grid import InProcessGrid

from clients.client_app import app as client_app
from clients.policy import SIMULATION_ENV
from fl_metamorphosis.checkpoint import RUN_FILE, RunCheckpoint, load_model, load_run, save_run
from fl_metamorphosis.config import build_config
from fl_metamorphosis.flower.messages import (
    EvaluateReply,
    FeaturesReply,
    MessageError,
    ReleaseShape,
    TrainReply,
)
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.privacy import ServerLedger
from fl_metamorphosis.privacy.device_policy import DevicePolicy
from server.replies import DeviceBinding, record_report, server_plan, sort_replies
from server.round_loop import run_federated
from tests.conftest import TINY_OVERRIDES

# (train metric, the lie): each must be rejected by TrainReply.from_record, naming the field
TRAIN_LIES = [
    ("noise-multiplier", math.nan),
    ("noise-multiplier", math.inf),
    ("noise-multiplier", -1.0),
    ("sample-rate", 2.0),
    ("sample-rate", 0.0),
    ("sample-rate", math.nan),
    ("epsilon", math.nan),
    ("epsilon", -1.0),
    ("steps", -1000),
    ("round-steps", -1000),
    ("round-steps", 10**6),  # more steps this round than in all
    ("train-loss", math.nan),
    ("num-examples", -5),
    ("device", -1),
]
SHAPE = ReleaseShape((16,), {"left": 10, "right": 10}, max_rows=100)


def _train(**metrics) -> TrainReply:
    weights = {"w": np.zeros(3, np.float32)}
    reply = TrainReply(0, 50, 0.5, 1.2, 1.1, 0.25, 12, 4, False, weights=weights).to_record()
    reply["metrics"] = MetricRecord({**dict(reply["metrics"]), **metrics})
    return reply


def _features(rows=20, width=16, dtype=torch.float32, labels=None, value=0.0) -> FeaturesReply:
    feats = torch.full((rows, width), value, dtype=dtype)
    y = torch.zeros(rows, dtype=torch.long) if labels is None else labels
    return FeaturesReply(0, 1, rows, {"left": (feats, y), "right": (feats, y)})


@pytest.mark.parametrize(("field", "lie"), TRAIN_LIES, ids=[f"{f}={v}" for f, v in TRAIN_LIES])
def test_a_train_reply_with_an_impossible_value_is_refused_naming_the_field(field, lie):
    with pytest.raises(MessageError, match=f"train reply: field '{field}'"):
        TrainReply.from_record(_train(**{field: lie}))


def test_an_honest_train_reply_passes_every_check():
    assert TrainReply.from_record(_train()).noise_multiplier == 1.1


FEATURE_LIES = {
    "width 1000": (_features(width=1000), "features.shape"),
    "float64": (_features(dtype=torch.float64), "features.dtype"),
    "NaN values": (_features(value=math.nan), "'features' is 'non-finite values'"),
    "labels 10^6": (_features(labels=torch.full((20,), 10**6)), "'labels' is 'out of range'"),
    "labels -3": (_features(labels=torch.full((20,), -3)), "'labels' is 'out of range'"),
    "float labels": (_features(labels=torch.zeros(20)), "one integer label per row"),
    "200,000 rows": (_features(rows=200_000), "at most the 100 asked for"),
}


@pytest.mark.parametrize("lie", list(FEATURE_LIES))
def test_a_features_reply_that_does_not_fit_the_servers_model_is_refused(lie):
    reply, field = FEATURE_LIES[lie]
    back = FeaturesReply.from_record(reply.to_record(), ["left", "right"])  # well-formed: the values lie
    with pytest.raises(MessageError, match=field.replace("(", r"\(").replace("^", r"\^")):
        back.check(SHAPE)


def test_an_honest_features_reply_fits():
    reply = FeaturesReply.from_record(_features(labels=torch.arange(20) % 10).to_record(), ["left", "right"])
    assert reply.check(SHAPE) is reply


@pytest.mark.parametrize("accuracy", [1.5, -0.1, math.nan])
def test_an_accuracy_outside_zero_one_is_refused(accuracy):
    record = EvaluateReply(0, 10, {"left": accuracy, "right": 0.5}).to_record()
    with pytest.raises(MessageError, match="accuracy.left"):
        EvaluateReply.from_record(record, ["left", "right"])


def _message(content, node: int, msg_id: str) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, node, 1
    msg = Message(content=content, message_type="train", dst_node_id=1, group_id="1")
    msg.metadata.__dict__["_message_id"] = msg_id
    msg.metadata.__dict__["_src_node_id"] = node
    return msg


def _sort(replies, binding=None, max_examples=1000):
    reference = {"w": torch.zeros(3)}
    return sort_replies(replies, reference, {}, binding=binding or DeviceBinding(), max_examples=max_examples)


def test_a_fedavg_weight_past_the_cap_is_rejected():
    out = _sort([_message(_train(**{"num-examples": 10**15}), 101, "a")])
    assert (
        not out.valid
        and "num-examples 1000000000000000 outside [1, federated.max_device_examples=1000]" in (out.rejected[101])
    )


def test_a_node_cannot_speak_for_another_nodes_device_nor_change_its_own():
    binding = DeviceBinding()
    _sort([_message(_train(device=0), 101, "a"), _message(_train(device=1), 102, "b")], binding)
    out = _sort([_message(_train(device=1), 101, "c"), _message(_train(device=1), 102, "d")], binding)
    assert out.rejected == {101: "claims device 1, but node 101 is device 0"}
    assert [r.device for r, _ in out.reports] == [1]  # only node 102's report reaches the ledger
    fresh = _sort([_message(_train(device=0), 103, "e")], binding)
    assert fresh.rejected == {103: "claims device 0, which is node 101"}


def test_the_binding_survives_a_checkpoint_so_a_resumed_deployment_keeps_it(tmp_path):
    binding = DeviceBinding()
    _sort([_message(_train(device=0), 101, "a"), _message(_train(device=1), 102, "b")], binding)
    ckpt = RunCheckpoint(round=1, method="m", config={}, generator={}, heads={}, binding=binding.state_dict())
    restored = DeviceBinding.from_state_dict(load_run(save_run(tmp_path, ckpt)).binding)
    out = _sort([_message(_train(device=1), 101, "c")], restored)  # after --resume: node 101 is still device 0
    assert out.rejected == {101: "claims device 1, but node 101 is device 0"}


def test_a_second_reply_of_one_node_in_a_round_is_not_counted_twice():
    msg = _message(_train(), 101, "a")
    out = _sort([msg, msg])
    assert len(out.reports) == 1 and out.valid == [msg]
    assert "a second reply" in out.rejected[101]


# ---- one device lying in a whole federation ----------------------------------------------------------

LIAR = 101  # device 0


def _metric_lie(field, value):
    def lie(reply):
        reply.content["metrics"] = MetricRecord({**dict(reply.content["metrics"]), field: value})

    return lie


def _task_lie(change):
    def lie(reply):
        for name in [n for n in reply.content.array_records if n.startswith("task.")]:
            record = reply.content[name]
            feats, labels = change(record["features"].numpy(), record["labels"].numpy())
            reply.content[name] = ArrayRecord({"features": Array(feats), "labels": Array(labels)})

    return lie


def _nan_weights(reply):
    sd = reply.content["arrays"].to_torch_state_dict()
    sd[next(iter(sd))].view(-1)[0] = float("nan")
    reply.content["arrays"] = ArrayRecord(sd)


def _drop_arrays(reply):
    del reply.content["arrays"]


# every train and features lie the federation below sends, one per message, in this order
FEDERATION_TRAIN_LIES = [
    *(_metric_lie(f, v) for f, v in TRAIN_LIES if f != "device"),
    _metric_lie("num-examples", 10**15),
    _metric_lie("device", 1),  # another node's device
    _metric_lie("protocol", 99),
    _nan_weights,
    _drop_arrays,
]
FEDERATION_FEATURE_LIES = [
    _task_lie(lambda f, y: (np.zeros((len(f), 1000), np.float32), y)),
    _task_lie(lambda f, y: (f.astype(np.float64), y)),
    _task_lie(lambda f, y: (np.full_like(f, np.nan), y)),
    _task_lie(lambda f, y: (f, np.full_like(y, 10**6))),
    _task_lie(lambda f, y: (f, np.full_like(y, -3))),
    _metric_lie("device", 2),
]


def _liar(lies_by_kind):
    """The liar's replies of each kind in ``lies_by_kind`` carry its lies in turn, then none; other kinds
    pass as the device sent them."""
    sent = dict.fromkeys(lies_by_kind, 0)

    def tamper(node, reply):
        kind = reply.metadata.message_type
        if node != LIAR or reply.has_error() or kind not in lies_by_kind:
            return reply
        lies = lies_by_kind[kind]
        if sent[kind] >= len(lies):
            return None  # silent: the baseline's device sends nothing of this kind
        lies[sent[kind]](reply)
        sent[kind] += 1
        return reply

    return tamper


def _run_both(tmp_path, rounds: int, lies: dict) -> tuple:
    """The same seeded federation twice: the liar silent on the lied-about kinds, then lying."""
    cfg = build_config(
        None,
        [
            *TINY_OVERRIDES,
            'methods=["metamorphosis"]',
            "release_gate.enabled=false",
            "randomness.source=seeded",  # both runs draw the same noise: results comparable exactly
            f"federated.rounds={rounds}",
            "federated.min_train_devices=2",
            "federated.head_epochs=1",
            "train.epochs=1",
        ],
    )
    runs = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fewer reductions whose order varies: less float noise between the runs
    try:
        for name, schedule in (("silent", {k: [] for k in lies}), ("lying", lies)):
            out = tmp_path / name
            policy = DevicePolicy.from_config(cfg)
            grid = InProcessGrid(client_app, 3, out / "devices", tamper=_liar(schedule), policy=policy)
            runs.append((run_federated(grid, cfg, out, audit=False), read_jsonl(out / "metrics.jsonl")))
    finally:
        torch.set_num_threads(threads)
    return runs


def _same_results(tmp_path, silent, lying, devices=("1", "2")) -> None:
    """The same model, heads and ledger: each lie left nothing behind. The ledger must match exactly; the
    weights to the spread of two identical runs (below); the server's test accuracy, which draws its own
    secret feature noise in each run, to within a few test images."""
    (silent_summary, silent_rows), (lying_summary, lying_rows) = silent, lying
    assert len(lying_rows) == len(silent_rows)  # the run completed
    final = RUN_FILE.format(len(silent_rows))
    _, _, gen_s, heads_s = load_model(tmp_path / "silent" / "checkpoints" / final)
    _, _, gen_l, heads_l = load_model(tmp_path / "lying" / "checkpoints" / final)
    # Two identical in-process runs already differ by up to 0.02 in a few weights (measured): float noise that
    # Adam, on the devices and on the server, scales up where a gradient is near zero. The liar's updates,
    # honest ones even, accepted in every round moved the encoder by 0.14 (measured): far outside.
    torch.testing.assert_close({**gen_s, **heads_s}, {**gen_l, **heads_l}, rtol=0.0, atol=0.05)
    for row_s, row_l in zip(silent_rows, lying_rows, strict=True):
        for task in ("left", "right"):
            assert row_s[f"test_acc.{task}"] == pytest.approx(row_l[f"test_acc.{task}"], abs=0.02)
    for device in devices:  # the honest devices' privacy as the server books it
        s, lied = silent_summary["device_privacy"][device], lying_summary["device_privacy"][device]
        assert (s["epsilon"], s["steps"]) == (pytest.approx(lied["epsilon"], rel=1e-9), lied["steps"])


@pytest.mark.slow(seconds=25)
def test_a_device_sending_every_train_lie_leaves_the_honest_devices_results_as_if_it_sent_nothing(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setenv(SIMULATION_ENV, "1")  # seeded noise, allowed only in a simulation
    rounds = len(FEDERATION_TRAIN_LIES)
    lies = {"train": FEDERATION_TRAIN_LIES, "query.features": [], "evaluate": [_metric_lie("accuracy.left", 1.5)]}
    silent, lying = _run_both(tmp_path, rounds, lies)
    assert [r["rejected"] for r in lying[1]] == [1] * rounds  # each round's lie rejected, the round went on
    _same_results(tmp_path, silent, lying)
    log = caplog.text
    for field in ("noise-multiplier", "sample-rate", "epsilon", "steps", "round-steps", "train-loss"):
        assert f"rejected reply of node {LIAR}: train reply: field '{field}'" in log
    assert "claims device 1, but node 101 is device 0" in log
    assert "federated.max_device_examples" in log
    assert "evaluate: rejected reply of node 101: evaluate reply: field 'accuracy.left' is 1.5" in log


@pytest.mark.slow
def test_a_device_sending_every_features_lie_leaves_the_heads_as_if_it_sent_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")
    lies = {"query.features": FEDERATION_FEATURE_LIES}  # it trains honestly; its releases lie
    silent, lying = _run_both(tmp_path, len(FEDERATION_FEATURE_LIES) - 1, lies)  # round 0 and every round
    _same_results(tmp_path, silent, lying, devices=("0", "1", "2"))
    rejected = [line for line in caplog.text.splitlines() if f"rejected features reply of node {LIAR}" in line]
    assert len(rejected) == len(FEDERATION_FEATURE_LIES)
    for field, line in zip(
        ("features.shape", "features.dtype", "non-finite", "out of range", "out of range", "claims device 2"),
        rejected,
        strict=True,
    ):
        assert field in line


def test_the_ledger_books_the_servers_own_plan_when_a_device_claims_less_spending():
    cfg = build_config(None, [])  # the demo: 2,000 pairs a device, sigma and q from its own config
    honest = TrainReply.from_record(_train(**{"num-examples": 2000}))
    sigma, q, steps = server_plan(cfg, honest)
    assert (round(sigma, 3), q, steps) == (1.56, 1 / 7, 7)  # what a demo device reports (docs/federated.md)
    lying = TrainReply.from_record(
        _train(**{"num-examples": 2000, "noise-multiplier": 1e6, "sample-rate": 1e-9, "round-steps": 7, "steps": 7})
    )
    ledger, plain = ServerLedger(cfg.dp_sgd.delta), ServerLedger(cfg.dp_sgd.delta)
    lying.epsilon = 0.0
    record_report(ledger, lying, cfg)
    plain.record_train(0, **{k: getattr(lying, k) for k in ("epsilon", "noise_multiplier", "sample_rate", "steps",
                                                              "round_steps", "grouped")})  # fmt: skip
    assert plain.epsilon(0) < 0.2  # its claims alone: next to nothing spent
    assert ledger.epsilon(0) > 1.0  # one round of the plan: sigma 1.56, q 1/7, 7 steps
    assert "the larger epsilon stands" in ledger.disagreements[0]


def test_a_noise_multiplier_the_accountant_cannot_evaluate_is_booked_as_unbounded_not_a_crash():
    ledger = ServerLedger(1e-5)
    ledger.record_train(0, epsilon=1.0, noise_multiplier=1e-300, sample_rate=0.5, steps=10, round_steps=10,
                        grouped=False)  # fmt: skip
    assert ledger.epsilon(0) == math.inf
