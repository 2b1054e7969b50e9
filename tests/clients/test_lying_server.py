"""A server that lies about the config and the weights: the device refuses, or releases nothing a probe reads.

Each request goes to the real ClientApp (all its mods) with a device whose policy is the project's
defaults, as on a real device. Config lies must be refused with an error reply that names the field and
both values, with nothing trained, released or counted; weight lies (weights trained to leak, round 0's
random weights) must leave the device withheld, or released at what an independent attacker reads as
chance.
"""

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app as client_app
from clients.secure_aggregation import SecureAggregationRequired
from fl_metamorphosis.audit import cross_task_attacks
from fl_metamorphosis.config import build_config
from fl_metamorphosis.data.partition import device_datasets
from fl_metamorphosis.flower.messages import POLICY_REFUSED, config_record
from fl_metamorphosis.flower.model_state import joint_state
from fl_metamorphosis.model import build_heads
from fl_metamorphosis.privacy.device_policy import DevicePolicy
from fl_metamorphosis.training import released_features
from fl_metamorphosis.training.local_round import build_generator

HONEST = [*TINY_OVERRIDES, 'methods=["metamorphosis"]']

# (override a lying server sends, the field its refusal must name, the value it must quote)
LIES = [
    ("feature_dp.enabled=false", "feature_dp.enabled", "False"),
    ("feature_dp.noise_std=1e-9", "feature_dp.noise_std", "1e-09"),
    ("feature_dp.clip_norm=100.0", "feature_dp.clip_norm", "100.0"),
    ("feature_dp.mechanism=laplace", "feature_dp.mechanism", "laplace"),
    ("feature_dp.delta=0.5", "feature_dp.delta", "0.5"),
    ("feature_dp.max_releases_per_pair=none", "feature_dp.max_releases_per_pair", "None"),
    ("feature_dp.max_releases_per_pair=5", "feature_dp.max_releases_per_pair", "5"),
    ('methods=["universal"]', "methods", "universal"),
    ('methods=["metamorphosis_no_noise"]', "methods", "metamorphosis_no_noise"),
    ("dp_sgd.enabled=false", "dp_sgd.enabled", "False"),
    ("dp_sgd.delta=0.5", "dp_sgd.delta", "0.5"),
    ("dp_sgd.delta=0.999", "dp_sgd.delta", "0.999"),
    ("federated.device_epsilon_budget=100.0", "federated.device_epsilon_budget", "100.0"),
    ("release_gate.enabled=false", "release_gate.enabled", "False"),
    ("release_gate.margin=0.5", "release_gate.margin", "0.5"),
    ("release_gate.confidence=0.9999", "release_gate.confidence", "0.9999"),
    ("release_gate.reference=false", "release_gate.reference", "False"),
]


def _message(cfg, kind: str, rnd: int = 1, generator=None) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    if generator is None:
        torch.manual_seed(0)
        generator = build_generator(cfg, data)
    heads = build_heads(generator.feature_shape, [10, 10], cfg.model)
    content = RecordDict(
        {"arrays": ArrayRecord(joint_state(generator, heads)), "config": config_record(cfg, **{"server-round": rnd})}
    )
    msg = Message(content=content, message_type=kind, dst_node_id=101, group_id=str(rnd))
    msg.metadata.__dict__["_message_id"] = f"{kind}-{rnd}"
    return msg


def _device(state_dir, policy_file=None) -> Context:
    node_config = {"partition-id": 0, "num-partitions": 3, "state-dir": str(state_dir)}
    if policy_file is not None:
        node_config["policy-file"] = str(policy_file)
    return Context(run_id=1, node_id=101, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize("kind", ["train", "query.features", "evaluate"])
@pytest.mark.parametrize(("lie", "field", "asked"), LIES, ids=[lie for lie, _, _ in LIES])
def test_a_config_below_the_policy_is_refused_naming_the_field_and_nothing_is_counted(
    tmp_path, kind, lie, field, asked
):
    cfg = build_config(None, [*HONEST, lie])
    reply = client_app(_message(cfg, kind), _device(tmp_path))
    assert reply.has_error()
    reason = reply.error.reason
    assert reason.startswith(POLICY_REFUSED) and f"{field}: the server asked" in reason and asked in reason
    assert "requires" in reason  # ... and the floor it did not meet
    assert not any(tmp_path.iterdir())  # no privacy state, no memo, no gate log: nothing trained or released


def test_an_honest_config_at_the_policy_is_served(tmp_path):
    cfg = build_config(None, HONEST)
    reply = client_app(_message(cfg, "train"), _device(tmp_path))
    assert not reply.has_error() and reply.content["metrics"]["declined"] == 0


def test_a_stricter_config_than_the_policy_is_computed_as_sent(tmp_path):
    cfg = build_config(None, [*HONEST, "feature_dp.noise_std=0.5", "federated.device_epsilon_budget=4.0"])
    reply = client_app(_message(cfg, "train"), _device(tmp_path))
    assert not reply.has_error() and reply.content["metrics"]["epsilon"] <= 4.0


def test_the_owners_policy_file_and_node_limits_tighten_the_floors(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("min_feature_noise = 0.4\nepsilon_budget = 6.0\n")
    state = tmp_path / "state"
    cfg = build_config(None, HONEST)  # noise 0.25, budget 8: below this owner's floors
    reason = client_app(_message(cfg, "query.features"), _device(state, policy)).error.reason
    assert "feature_dp.noise_std: the server asked 0.25" in reason and "at least 0.4" in reason
    assert "federated.device_epsilon_budget: the server asked 8.0" in reason and "at most 6.0" in reason
    context = _device(state)
    context.node_config["epsilon-budget"] = 2.0  # a deploy device flag lowers the default policy's 8
    reason = client_app(_message(cfg, "train"), context).error.reason
    assert "at most 2.0" in reason


def test_a_looser_node_limit_never_loosens_the_policy():
    assert DevicePolicy().tightened(epsilon_budget=50.0, max_releases_per_pair=9) == DevicePolicy()


def test_a_policy_that_requires_secure_aggregation_refuses_a_plain_train_request(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("secure_aggregation = true\n")
    cfg = build_config(None, [*HONEST, "federated.secure_aggregation=true"])  # the flag alone is a lie
    with pytest.raises(SecureAggregationRequired, match="privacy policy"):
        client_app(_message(cfg, "train"), _device(tmp_path / "state", policy))


def _leaky_generator(cfg, data, epochs: int = 8):
    """Weights a lying server trained to leak: each task's feature trained to predict BOTH tasks' labels."""
    torch.manual_seed(1)
    generator = build_generator(cfg, data)
    dim = generator.feature_shape[0]
    probes = torch.nn.ModuleList(torch.nn.Linear(dim, 10) for _ in range(4))
    opt = torch.optim.Adam([*generator.parameters(), *probes.parameters()], lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(data), 64):
            feats, _ = generator(data.images[i : i + 64])
            y = data.labels[i : i + 64]
            loss = sum(
                torch.nn.functional.cross_entropy(probes[2 * t + s](feats[:, t]), y[:, s])
                for t in range(2)
                for s in range(2)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return generator


def _features_reply(cfg, generator, tmp_path):
    reply = client_app(_message(cfg, "query.features", 0, generator), _device(tmp_path))
    assert not reply.has_error()
    return reply


def _independent_attack(cfg, generator, task: str) -> tuple[float, float]:
    """An attacker that knows the weights: learns on the train split, scored on the test split."""
    from fl_metamorphosis.data import load_dataset

    split = load_dataset(cfg.data, cfg.train.seed)
    att = released_features(generator, split.train.images, cfg.feature_dp, 11).numpy()
    ev = released_features(generator, split.test.images, cfg.feature_dp, 12).numpy()
    result = cross_task_attacks(
        att, split.train.labels.numpy(), ev, split.test.labels.numpy(), split.test.task_names, cfg.audit
    )
    pair = next(v for k, v in result.items() if k.startswith(f"{task}->"))
    return pair["accuracy"], pair["chance"]


@pytest.mark.slow
def test_weights_trained_to_leak_leave_nothing_a_probe_reads(tmp_path):
    cfg = build_config(None, [*HONEST, "data.train_pairs=1500", "data.test_pairs=600", 'audit.attackers=["linear"]'])
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    generator = _leaky_generator(cfg, data, epochs=6)
    accuracy, chance = _independent_attack(cfg, generator, "left")
    assert accuracy > chance + 0.3  # the lie is real: these weights give the other digit away
    reply = _features_reply(cfg, generator, tmp_path)
    withheld, noise = dict(reply.content["gate"]), dict(reply.content["noise"])
    assert all("release gate" in r for r in withheld.values())
    for task in ("left", "right"):
        rows = len(reply.content[f"task.{task}"]["labels"].numpy())
        if task in withheld:
            assert rows == 0
            continue
        # released only at a raised noise, where an attacker that knows the weights reads it near chance
        assert noise[task] > 1.0
        raised = cfg.model_copy(
            update={"feature_dp": cfg.feature_dp.model_copy(update={"noise_std": 0.25 * noise[task]})}
        )
        accuracy, chance = _independent_attack(raised, generator, task)
        assert accuracy <= chance + cfg.release_gate.margin + 0.05, (task, noise[task], accuracy, chance)
    # the probe's figures stay on the device
    assert "accuracy" not in str(withheld) and (tmp_path / "release_gate.jsonl").exists()


@pytest.mark.slow
def test_round_zeros_random_weights_release_nothing_a_probe_reads(tmp_path):
    cfg = build_config(
        None, [*HONEST, "data.train_pairs=1500", "data.test_pairs=1500", 'audit.attackers=["linear", "mlp"]']
    )
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    torch.manual_seed(0)
    generator = build_generator(cfg, data)
    reply = _features_reply(cfg, generator, tmp_path)
    withheld = dict(reply.content["gate"])
    for task in ("left", "right"):
        rows = len(reply.content[f"task.{task}"]["labels"].numpy())
        if task in withheld:
            assert rows == 0
            continue
        accuracy, chance = _independent_attack(cfg, generator, task)
        # released: an attacker with the weights reads it within the gate's margin plus the test's slack
        assert rows > 0 and accuracy <= chance + cfg.release_gate.margin + 0.05, (task, accuracy, chance)
    assert np.isfinite(reply.content["metrics"]["releases-total"])


def _federation(tmp_path, cfg, policy):
    from inprocess_grid import InProcessGrid

    from server.round_loop import run_federated

    grid = InProcessGrid(client_app, 3, tmp_path / "devices", policy=policy)
    return grid, lambda: run_federated(grid, cfg, tmp_path / "run", audit=False)


def test_the_server_counts_a_devices_refusal_per_round_and_goes_on_with_the_rest(tmp_path):
    from fl_metamorphosis.metrics import read_jsonl

    cfg = build_config(None, [*HONEST, "federated.rounds=1", "release_gate.enabled=false"])
    grid, run = _federation(tmp_path, cfg, DevicePolicy.from_config(cfg))
    strict = tmp_path / "strict.toml"
    strict.write_text("min_feature_noise = 0.5\nrelease_gate = false\n")
    grid.contexts[103].node_config["policy-file"] = str(strict)  # one owner asks for more noise
    run()
    (row,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert row["refused"] == 2 and row["answered"] == 2  # round 0's features request and round 1's train request
    assert "feature_dp.noise_std: the server asked 0.25" in row["refusals"]["103"]
    assert "103 (round 0)" in row["refusals"]


def test_a_run_whose_devices_all_refuse_ends_with_their_words(tmp_path):
    from server.round_loop import TooFewDevices

    cfg = build_config(None, [*HONEST, "federated.rounds=1", "feature_dp.noise_std=0.1"])
    _, run = _federation(tmp_path, cfg, None)  # the project's defaults: noise at least 0.25
    with pytest.raises(TooFewDevices, match=r"3 of 3 devices refused .* feature_dp.noise_std: the server asked 0.1"):
        run()
