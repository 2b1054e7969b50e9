"""Poisoned and faulty devices: each attack changes what a device sends as specified, the attackers are
fixed by the seed, a device plays an attack only in a simulation, and the server survives them."""

import pytest
import torch
from conftest import TINY_OVERRIDES
from device_messages import device_context, train_message

from clients.client_app import app as client_app
from clients.device_app import PoisoningRefused
from fl_metamorphosis.audit.poisoning import flip_labels, malicious_devices, poison_update
from fl_metamorphosis.config import ConfigError, PoisoningConfig, build_config
from fl_metamorphosis.data import MultiTaskDataset, TaskSpec
from fl_metamorphosis.environment import SIMULATION_ENV
from fl_metamorphosis.flower.messages import TrainReply
from fl_metamorphosis.privacy.device_policy import DevicePolicy

RECEIVED = {"generator.w": torch.tensor([1.0, 2.0, 3.0]), "heads.steps": torch.tensor([5])}
TRAINED = {"generator.w": torch.tensor([1.5, 1.0, 3.0]), "heads.steps": torch.tensor([6])}


def _poison(attack, tmp_path, trained=TRAINED, **params):
    cfg = PoisoningConfig(attack=attack, share=0.5, **params)
    return poison_update(cfg, trained, RECEIVED, torch.Generator().manual_seed(0), tmp_path)


def test_sign_flip_reverses_and_scales_the_update(tmp_path):
    sent = _poison("sign_flip", tmp_path, sign_flip_scale=2.0)
    assert torch.equal(sent["generator.w"], torch.tensor([0.0, 4.0, 3.0]))  # w_g - 2 (w - w_g)
    assert torch.equal(sent["heads.steps"], TRAINED["heads.steps"])  # counters are sent as trained


def test_scale_boosts_the_update(tmp_path):
    sent = _poison("scale", tmp_path, boost=10.0)
    assert torch.equal(sent["generator.w"], torch.tensor([6.0, -8.0, 3.0]))  # w_g + 10 (w - w_g)


def test_gaussian_sends_noise_around_the_received_weights(tmp_path):
    big = {"generator.w": torch.zeros(20_000)}
    cfg = PoisoningConfig(attack="gaussian", share=0.5, noise_std=0.3)
    sent = poison_update(cfg, {"generator.w": torch.ones(20_000)}, big, torch.Generator().manual_seed(0), tmp_path)
    noise = sent["generator.w"]
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 0.3) < 0.01  # the training is gone


def test_stale_sends_its_first_round_weights_every_round(tmp_path):
    first = _poison("stale", tmp_path)
    later = _poison("stale", tmp_path, trained={k: v * 7 for k, v in TRAINED.items()})
    assert all(torch.equal(first[k], TRAINED[k]) and torch.equal(later[k], TRAINED[k]) for k in TRAINED)


def test_label_flip_maps_every_tasks_labels_and_leaves_the_update(tmp_path):
    tasks = [TaskSpec("left", 10), TaskSpec("right", 3)]
    data = MultiTaskDataset(torch.zeros(3, 1, 2, 2), torch.tensor([[0, 0], [9, 2], [4, 1]]), tasks)
    flipped = flip_labels(data)
    assert flipped.labels.tolist() == [[9, 2], [0, 0], [5, 1]] and torch.equal(flipped.images, data.images)
    assert _poison("label_flip", tmp_path) is TRAINED


def test_the_attackers_are_the_share_rounded_half_up_and_fixed_by_the_seed():
    cfg = PoisoningConfig(attack="sign_flip", share=0.25)
    assert len(malicious_devices(cfg, 10, seed=0)) == 3  # 2.5 -> 3
    assert malicious_devices(cfg, 10, seed=0) == malicious_devices(cfg, 10, seed=0)
    assert len({malicious_devices(cfg, 10, seed=s) for s in range(10)}) > 1
    assert malicious_devices(PoisoningConfig(), 10, seed=0) == frozenset()


def test_a_share_that_poisons_no_device_is_refused_by_name():
    with pytest.raises(ConfigError, match="federated.poisoning.attack='sign_flip' with share=0.01"):
        build_config(None, [*TINY_OVERRIDES, "federated.poisoning.attack=sign_flip", "federated.poisoning.share=0.01"])


def _attack_cfg(*extra):
    return build_config(
        None,
        [
            *TINY_OVERRIDES,
            'methods=["metamorphosis"]',
            "federated.poisoning.attack=sign_flip",
            "federated.poisoning.share=0.5",
            "federated.poisoning.sign_flip_scale=3",
            *extra,
        ],
    )


def test_a_device_outside_a_simulation_refuses_to_attack(tmp_path, monkeypatch):
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    msg, _ = train_message(_attack_cfg())
    with pytest.raises(PoisoningRefused, match="attack='none'"):
        client_app(msg, device_context(tmp_path))


def test_a_poisoned_device_in_a_simulation_sends_its_flipped_update(tmp_path, monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")
    cfg = _attack_cfg("randomness.source=seeded")
    device = min(malicious_devices(cfg.federated.poisoning, cfg.federated.num_devices, cfg.train.seed))

    def sent(run_cfg, folder):
        msg, gen = train_message(run_cfg)
        context = device_context(folder)
        context.node_config["partition-id"] = device
        return TrainReply.from_record(client_app(msg, context).content).weights, gen

    poisoned, gen = sent(cfg, tmp_path / "poisoned")
    honest, _ = sent(build_config(cfg.model_dump(), ["federated.poisoning.attack='none'"]), tmp_path / "honest")
    received = {f"generator.{k}": v for k, v in gen.state_dict().items()}
    name = next(
        k for k, v in received.items() if v.is_floating_point() and not torch.equal(torch.as_tensor(honest[k]), v)
    )
    expected = received[name] - 3 * (torch.as_tensor(honest[name]) - received[name])
    assert torch.allclose(torch.as_tensor(poisoned[name]), expected, atol=1e-5)


def _run(tmp_path, name, *extra):
    from inprocess_grid import InProcessGrid

    from server.round_loop import run_federated

    cfg = build_config(None, [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "randomness.source=seeded", *extra])
    out = tmp_path / name
    summary = run_federated(
        InProcessGrid(client_app, cfg.federated.num_devices, out / "devices", policy=DevicePolicy.from_config(cfg)),
        cfg,
        out,
        audit=False,
    )
    return cfg, summary


# Learns within 5 rounds (DP-SGD, the feature noise and the release gate off: the attack, not the noise, is
# what is measured; with the noise on, an honest run reached only 0.21-0.39 and the gaps were within seed
# noise); one device in five sends its update reversed and scaled by 8.
ROBUST = [
    "dp_sgd.enabled=false", "feature_dp.enabled=false", "release_gate.enabled=false",
    "data.train_pairs=3000", "federated.num_devices=5", "federated.rounds=5",
    "federated.local_epochs=2", "federated.local_lr=0.05", "federated.head_epochs=5",
    "federated.feature_samples_per_device=200", "federated.poisoning.attack=sign_flip",
    "federated.poisoning.share=0.2", "federated.poisoning.sign_flip_scale=8",
]  # fmt: skip


def _final_accuracy(summary):
    last = summary["history"][-1]
    accs = [v for k, v in last.items() if k.startswith("test_acc.")]
    return sum(accs) / len(accs)


@pytest.mark.slow(seconds=20)
def test_a_trimmed_mean_keeps_learning_under_sign_flipping_where_fedavg_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")
    _, fedavg = _run(tmp_path, "fedavg", *ROBUST)
    _, trimmed = _run(
        tmp_path, "trimmed", *ROBUST, "federated.strategy.name=fedtrimmedavg", "federated.strategy.beta_trim=0.2"
    )
    _, honest = _run(tmp_path, "honest", *ROBUST, "federated.poisoning.attack='none'")
    fedavg, trimmed, honest = (_final_accuracy(s) for s in (fedavg, trimmed, honest))
    # seeds 0-3: honest 0.79-0.89, trimmed 0.65-0.74, FedAvg 0.11-0.26 (the server's heads still read
    # something from the wrecked encoder's clean features)
    assert honest - fedavg > 0.4, (honest, fedavg)  # FedAvg averages the flipped update in: most is lost
    assert trimmed - fedavg > 0.3, (trimmed, fedavg)  # the trimmed mean cuts it out and keeps most of it


@pytest.mark.slow
def test_an_overflowing_boosted_update_is_rejected_and_spends_no_honest_devices_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")
    attack = ["federated.num_devices=3", "federated.poisoning.attack=scale", "federated.poisoning.share=0.34"]
    cfg, attacked = _run(tmp_path, "attacked", *attack, "federated.poisoning.boost=1e39")
    _, clean = _run(tmp_path, "clean", "federated.num_devices=3")
    attackers = malicious_devices(cfg.federated.poisoning, 3, cfg.train.seed)
    assert len(attackers) == 1
    assert all(row["rejected"] == 1 and row["aggregated"] for row in attacked["history"])  # the round goes on
    budget = cfg.federated.device_epsilon_budget
    for device, figures in attacked["device_privacy"].items():
        assert figures["epsilon"] <= budget
        if int(device) not in attackers:  # an honest device's privacy does not depend on the others
            assert figures["epsilon"] == clean["device_privacy"][device]["epsilon"]
