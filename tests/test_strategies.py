import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from inprocess_grid import InProcessGrid

from fl_metamorphosis.config import ConfigError, StrategyName, build_config
from server.strategies import build_strategy

NAMES = list(StrategyName.__args__)


def _replies(n: int):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    g = torch.Generator().manual_seed(0)
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
    assert len(list(strategy.configure_train(1, initial, ConfigRecord(), InProcessGrid(None, 7)))) == 7
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
