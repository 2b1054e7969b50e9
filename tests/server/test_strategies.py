from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from inprocess_grid import InProcessGrid

from fl_metamorphosis.checkpoint import RunCheckpoint, load_run, save_run
from fl_metamorphosis.config import ConfigError, StrategyName, build_config
from server.strategies import build_strategy
from server.strategy_state import STATE_ATTRIBUTES, load_strategy_state, strategy_state

NAMES = list(StrategyName.__args__)


def _replies(n: int, seed: int = 0):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    g = torch.Generator().manual_seed(seed)
    out = []
    for node in range(n):
        ask = Message(content=RecordDict(), message_type="train", dst_node_id=100 + node, group_id="1")
        ask.metadata.__dict__["_message_id"] = f"m{node}"
        weights = {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)}
        content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord({"num-examples": 10 + node})})
        reply = Message(content=content, reply_to=ask)
        reply.metadata.__dict__["_src_node_id"] = 100 + node
        out.append(reply)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_configured_strategy_builds_and_aggregates(name):
    cfg = build_config(None, ["federated.num_devices=7", f"federated.strategy.name={name}"])
    strategy = build_strategy(cfg.federated)
    # server-side optimisers (FedAdam, FedAvgM, ...) learn the current global weights in configure_train
    initial = ArrayRecord({"w": torch.zeros(3, 2), "b": torch.zeros(2)})
    assert len(list(strategy.configure_train(1, initial, ConfigRecord(), InProcessGrid(None, 7, Path("unused"))))) == 7
    arrays, _ = strategy.aggregate_train(1, _replies(7))
    state = arrays.to_torch_state_dict()
    assert state["w"].shape == (3, 2) and torch.isfinite(state["w"]).all()


def test_fedavg_is_the_weighted_mean():
    replies = _replies(3)
    arrays, _ = build_strategy(build_config().federated).aggregate_train(1, replies)
    w = np.stack([r.content["arrays"]["w"].numpy() for r in replies])
    expected = np.tensordot(np.array([10, 11, 12]) / 33, w, axes=1)
    assert np.allclose(arrays["w"].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["federated.strategy.name=krum", "federated.strategy.num_malicious_nodes=4"], "num_malicious_nodes"),
        (["federated.strategy.name=bulyan", "federated.strategy.num_malicious_nodes=2"], "bulyan"),
        (["federated.strategy.name=multikrum", "federated.strategy.num_nodes_to_select=11"], "num_nodes_to_select"),
        (["federated.strategy.name=fedsgd"], "federated.strategy.name"),
        (["federated.strategy.beta_trim=0.5"], "beta_trim"),
        (["federated.min_train_devices=11"], "min_train_devices"),
    ],
)
def test_strategy_parameters_validated_with_the_config(overrides, field):
    with pytest.raises(ConfigError, match=field):
        build_config(None, overrides)


def _round(strategy, rnd: int, arrays: ArrayRecord, seed: int) -> ArrayRecord:
    list(strategy.configure_train(rnd, arrays, ConfigRecord(), InProcessGrid(None, 7, Path("unused"))))
    new, _ = strategy.aggregate_train(rnd, _replies(7, seed))
    return new


@pytest.mark.parametrize("name", NAMES)
def test_a_round_changes_no_strategy_attribute_but_the_saved_state(name):
    # A Flower upgrade that keeps new state between rounds fails here instead of resuming without it.
    strategy = build_strategy(
        build_config(None, ["federated.num_devices=7", f"federated.strategy.name={name}"]).federated
    )
    before = {k: repr(v) for k, v in vars(strategy).items()}
    _round(strategy, 1, ArrayRecord({"w": torch.zeros(3, 2), "b": torch.zeros(2)}), 0)
    changed = {k for k, v in vars(strategy).items() if repr(v) != before.get(k)}
    assert changed <= set(STATE_ATTRIBUTES)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_a_stateful_strategy_resumes_with_its_moments(name, tmp_path):
    cfg = build_config(None, ["federated.num_devices=7", f"federated.strategy.name={name}"])
    start = ArrayRecord({"w": torch.zeros(3, 2), "b": torch.zeros(2)})
    uninterrupted = build_strategy(cfg.federated)
    after_one = _round(uninterrupted, 1, start, seed=0)
    expected = _round(uninterrupted, 2, after_one, seed=1).to_torch_state_dict()

    crashed = build_strategy(cfg.federated)
    saved = _round(crashed, 1, start, seed=0)
    ckpt = RunCheckpoint(1, "metamorphosis", {}, saved.to_torch_state_dict(), {}, strategy=strategy_state(crashed))
    restored = load_run(save_run(tmp_path, ckpt))  # through the checkpoint file, as a resumed run reads it
    resumed = build_strategy(cfg.federated)
    load_strategy_state(resumed, restored.strategy)
    got = _round(resumed, 2, ArrayRecord(restored.generator), seed=1).to_torch_state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)  # bit for bit

    forgetful = build_strategy(cfg.federated)  # the same replies without the moments: another result
    lost = _round(forgetful, 2, ArrayRecord(restored.generator), seed=1).to_torch_state_dict()
    assert not all(torch.allclose(lost[k], expected[k]) for k in expected)
