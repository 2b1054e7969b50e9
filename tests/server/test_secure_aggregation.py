"""Secure aggregation (Flower's SecAgg+) in the round loop, run in-process through a test Grid."""

import copy

import numpy as np
import pytest
from conftest import TINY_OVERRIDES
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.common import Code, FitRes, Status, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity
from inprocess_grid import InProcessGrid

from clients.client_app import app as client_app
from clients.secure_aggregation import SecureAggregationRequired
from fl_metamorphosis.config import ConfigError, build_config
from fl_metamorphosis.data.partition import device_datasets
from fl_metamorphosis.flower import secagg_records
from fl_metamorphosis.flower.messages import PROTOCOL_VERSION, MessageError, TrainReply, config_record
from fl_metamorphosis.flower.model_state import joint_state
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.model import build_heads
from fl_metamorphosis.privacy.device_policy import DevicePolicy
from fl_metamorphosis.privacy.device_state import DeviceState
from fl_metamorphosis.training.local_round import build_generator
from server import round_loop
from server.round_loop import run_federated
from server.secure_aggregation import secure_train

SECURE_TINY = [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "federated.secure_aggregation=true"]


def _cfg(*extra):
    return build_config(None, [*SECURE_TINY, *extra])


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


@pytest.mark.parametrize(
    ("strategy", "dropped"),
    [("fedavg", None), ("fedadam", None), ("fedavg", 103)],
    ids=["fedavg", "fedadam", "fedavg-one-device-drops-out"],
)
def test_secure_aggregate_equals_the_plain_aggregate_of_the_same_replies(tmp_path, strategy, dropped):
    """Each device trains once (a plain round); the secure round asks the same, so every device answers
    with the same update (the replay mod) and only the aggregation differs."""
    cfg = _cfg(f"federated.strategy.name={strategy}")
    plain_allowed = DevicePolicy.from_config(cfg).model_copy(update={"secure_aggregation": False})
    grid = InProcessGrid(client_app, 3, tmp_path / "devices", policy=plain_allowed)
    fed = round_loop.start(cfg, tmp_path, resume=False)
    messages = round_loop.sample(grid, fed, 1)
    twin = copy.deepcopy(fed.strategy)  # FedAdam keeps the weights it sent and its moments
    plain = [r for r in round_loop.train(grid, messages) if r.metadata.src_node_id != dropped]
    expected, _ = twin.aggregate_train(1, plain)
    steps = {n: DeviceState.load(tmp_path / "devices" / str(n - 101)).history.steps for n in (101, 102, 103)}

    received: list[Message] = []

    def watch(node, reply):
        received.append(reply)
        masked = (
            RECORD_KEY_CONFIGS in reply.content.config_records
            and Key.MASKED_PARAMETERS in reply.content[RECORD_KEY_CONFIGS]
        )
        return None if node == dropped and masked else reply  # the dropped device never sends its masked update

    grid.tamper = watch
    secure = secure_train(grid, fed, messages, 1)
    actual, _ = fed.strategy.aggregate_train(1, secure.valid)

    kept = [101, 102] if dropped else [101, 102, 103]
    assert secure.contributors == kept and len(secure.valid) == 1
    if dropped:
        assert secure.rejected == {dropped: "dropped out of secure aggregation"}
    bound = secagg_records.mean_error_bound(
        cfg.federated.secagg, [int(r.content["metrics"]["num-examples"]) for r in plain]
    )
    exp, act = _arrays(expected), _arrays(actual)
    worst = max(float(np.abs(exp[k] - act[k]).max()) for k in exp)
    assert worst <= bound + 1e-6, (worst, bound)
    sent = _arrays(messages[0].content["arrays"])
    assert max(float(np.abs(exp[k] - sent[k]).max()) for k in exp) > 100 * (bound + 1e-6)  # the round moved them
    # what reached the server: masked integers and clear reports, never an array of weights or updates
    assert received and all(len(rec) == 0 for r in received for rec in r.content.array_records.values())
    assert sum(Key.MASKED_PARAMETERS in r.content.config_records.get(RECORD_KEY_CONFIGS, {}) for r in received) == 3
    # the same update sent again counts once on the device
    assert {n: DeviceState.load(tmp_path / "devices" / str(n - 101)).history.steps for n in steps} == steps


@pytest.mark.slow
def test_a_secure_federation_runs_and_its_epsilon_is_the_devices_own(tmp_path):
    cfg = _cfg("federated.strategy.name=fedprox")
    summary = run_federated(
        InProcessGrid(client_app, 3, tmp_path / "devices", policy=DevicePolicy.from_config(cfg)),
        cfg,
        tmp_path,
        audit=False,
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["answered"], r["aggregated"]) for r in rows] == [(3, True), (3, True)]
    for device, figures in summary["device_privacy"].items():
        own = DeviceState.load(tmp_path / "devices" / device).history.epsilon(cfg.dp_sgd.delta, cfg.dp_sgd.accountant)
        assert figures["epsilon"] == pytest.approx(own, rel=1e-12) and figures["rounds_trained"] == 2


def _plain_train_message(cfg, state_dir, **node_config):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    gen = build_generator(cfg, data)
    heads = build_heads(gen.feature_shape, [10, 10], cfg.model)
    content = RecordDict(
        {"arrays": ArrayRecord(joint_state(gen, heads)), "config": config_record(cfg, **{"server-round": 1})}
    )
    msg = Message(content=content, message_type="train", dst_node_id=101, group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    config = {"partition-id": 0, "num-partitions": 3, "state-dir": str(state_dir), **node_config}
    return msg, Context(run_id=1, node_id=101, node_config=config, state=RecordDict(), run_config={})


def test_a_device_that_requires_secure_aggregation_refuses_a_plain_train_request(tmp_path):
    msg, context = _plain_train_message(_cfg(), tmp_path, **{"secure-aggregation": "required"})
    with pytest.raises(SecureAggregationRequired, match="set federated.secure_aggregation=true on the server"):
        client_app(msg, context)
    assert DeviceState.load(tmp_path).history.steps == 0  # it refused before training


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"])
def test_strategies_that_read_each_update_are_refused(strategy):
    with pytest.raises(ConfigError, match=f"strategy '{strategy}' needs each update"):
        _cfg(f"federated.strategy.name={strategy}", "federated.num_devices=5")


def test_secure_aggregation_needs_two_devices_a_round():
    with pytest.raises(ConfigError, match="min_train_devices >= 2"):
        _cfg("federated.min_train_devices=1")


def _reply(declined: str | None = None) -> RecordDict:
    weights = None if declined else {"w": np.full(3, 1.5, np.float32)}
    return TrainReply(0, 50, 0.1, 1.0, 1.1, 0.1, 10, 5, False, declined, weights).to_record()


def test_a_device_sends_its_update_and_a_declining_device_sends_nothing_with_weight_zero():
    cfg = _cfg()
    request = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))}), "config": config_record(cfg)})
    fitres = compat.recorddict_to_fitres(secagg_records.fit_res(_reply(), request, cfg.federated.secagg), True)
    assert fitres.num_examples == 50 and fitres.metrics[secagg_records.CLIPPED] == 0
    np.testing.assert_array_equal(parameters_to_ndarrays(fitres.parameters)[0], np.full(3, 0.5, np.float32))
    report, clipped = secagg_records.train_report(fitres)
    assert (report.epsilon, report.steps, clipped) == (1.0, 10, 0)

    declined = compat.recorddict_to_fitres(
        secagg_records.fit_res(_reply("budget spent"), request, cfg.federated.secagg), True
    )
    assert declined.num_examples == 0 and not parameters_to_ndarrays(declined.parameters)[0].any()
    assert secagg_records.train_report(declined)[0].declined == "budget spent"


def test_a_malformed_secure_report_names_the_missing_field():
    metrics = {"protocol": PROTOCOL_VERSION, **{k: 0 for k in TrainReply.FIELDS}}
    with pytest.raises(MessageError, match="missing field 'secagg-clipped'"):
        secagg_records.train_report(FitRes(Status(Code.OK, ""), None, 0, metrics))


def test_a_secure_request_without_names_is_refused():
    cfg = _cfg()
    request = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(2, np.float32))}), "config": config_record(cfg)})
    content = compat.fitins_to_recorddict(secagg_records.fit_ins(request), True)
    del content["fitins.config"]["array-names"]
    with pytest.raises(MessageError, match="missing config field 'array-names'"):
        secagg_records.train_request(content)


def test_a_device_refuses_a_secure_round_smaller_than_its_minimum(tmp_path, caplog):
    cfg = _cfg()
    grid = InProcessGrid(client_app, 3, tmp_path / "devices", policy=DevicePolicy.from_config(cfg))
    grid.contexts[101].node_config["secure-aggregation-min-devices"] = 4
    fed = round_loop.start(cfg, tmp_path, resume=False)
    secure = secure_train(grid, fed, round_loop.sample(grid, fed, 1), 1)
    assert secure.contributors == [102, 103]  # the other two go on without it (their threshold allows)
    assert DeviceState.load(tmp_path / "devices" / "0").history.steps == 0  # it refused before training
    assert secure.rejected == {101: "dropped out of secure aggregation"}
    assert "a secure round of 3 devices" in caplog.text and "secure-aggregation-min-devices=4" in caplog.text
