"""ClientApp handlers and the ServerApp round loop, run in-process through a test Grid (no SuperLink)."""

import json

import pytest
import torch
from device_messages import device_context, fed_cfg, train_message
from flwr.app import ArrayRecord
from inprocess_grid import InProcessGrid

from clients.client_app import app as client_app
from clients.device_app import NoStateFolder
from fl_metamorphosis.checkpoint import load_run
from fl_metamorphosis.config import ConfigError
from fl_metamorphosis.data.partition import device_datasets, device_sources, train_sources
from fl_metamorphosis.environment import SIMULATION_ENV
from fl_metamorphosis.metrics import read_jsonl
from fl_metamorphosis.privacy.device_policy import DevicePolicy
from fl_metamorphosis.privacy.device_state import DeviceState
from server import round_loop
from server.round_loop import run_federated


def test_partitions_are_disjoint_and_cover_the_train_digits():
    cfg = fed_cfg("federated.partitioning=dirichlet", "federated.dirichlet_alpha=0.3")
    parts = [set(device_sources(cfg.data, cfg.federated, d, 0)) for d in range(3)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(train_sources(cfg.data, 0))
    train, test = device_datasets(cfg.data, cfg.federated, 1, 0)
    assert len(train) == 200 and len(test) > 0


def test_train_handler_reports_cumulative_epsilon_and_plain_weights(tmp_path):
    cfg = fed_cfg()
    context = device_context(tmp_path)
    first = client_app(train_message(cfg, 1)[0], context)
    second = client_app(train_message(cfg, 2)[0], context)
    m1, m2 = first.content["metrics"], second.content["metrics"]
    assert m1["declined"] == 0 and 0 < m1["epsilon"] < m2["epsilon"]  # cumulative over the rounds taken part in
    assert not any(k.startswith("_module") for k in second.content["arrays"])
    assert len(DeviceState.load(tmp_path).history.entries) == 1  # one accountant entry, steps summed
    assert m1["num-examples"] == 200


def test_features_handler_sends_each_task_only_its_own_labels(tmp_path):
    cfg = fed_cfg()
    msg, _ = train_message(cfg)
    msg.metadata.__dict__["_message_type"] = "query.features"
    reply = client_app(msg, device_context(tmp_path))
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    assert set(reply.content.array_records) == {"task.left", "task.right"}
    for t, name in enumerate(["left", "right"]):
        rec = reply.content[f"task.{name}"]
        assert set(rec) == {"features", "labels"}
        # one release per pair (the default cap) spread over round 0 and 2 rounds: ceil(200 / 3) of 100 asked
        assert rec["features"].numpy().shape == (67, cfg.model.feature_dim)
        labels = rec["labels"].numpy()
        assert set(labels) <= set(data.labels[:, t].tolist())
    assert reply.content["metrics"]["releases-max"] == 1


def test_features_handler_never_releases_a_pair_past_its_cap_and_keeps_the_count(tmp_path):
    cfg = fed_cfg("feature_dp.max_releases_per_pair=1")
    context = device_context(tmp_path)
    rows = []
    for rnd in range(4):  # round 0, the 2 rounds, and one query more than the schedule
        msg, _ = train_message(cfg, rnd)
        msg.metadata.__dict__["_message_type"] = "query.features"
        reply = client_app(msg, context)
        rows.append(len(reply.content["task.left"]["labels"].numpy()))
        assert reply.content["metrics"]["releases-max"] <= 1
    assert rows == [67, 67, 66, 0]  # every one of the device's 200 pairs once, then nothing
    assert reply.content["metrics"]["releases-total"] == 200


def test_a_device_limit_in_its_node_config_refuses_a_server_that_asks_for_more(tmp_path):
    cfg = fed_cfg("feature_dp.max_releases_per_pair=none")
    context = device_context(tmp_path, cfg)
    context.node_config["max-releases-per-pair"] = 1
    msg, _ = train_message(cfg, 0)
    msg.metadata.__dict__["_message_type"] = "query.features"
    reason = client_app(msg, context).error.reason
    assert "feature_dp.max_releases_per_pair: the server asked None" in reason and "at most 1" in reason
    assert not (tmp_path / "privacy_state.ckpt").exists()  # nothing released, nothing counted


def test_task_records_are_shuffled_apart(tmp_path):
    # rows of the two task records must not line up: the server cannot pair one task's features with
    # another task's labels by position
    cfg = fed_cfg("feature_dp.max_releases_per_pair=none", "federated.feature_samples_per_device=200")
    msg, _ = train_message(cfg, 0)
    msg.metadata.__dict__["_message_type"] = "query.features"
    reply = client_app(msg, device_context(tmp_path, cfg))
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    left, right = (reply.content[f"task.{n}"]["labels"].numpy() for n in ("left", "right"))
    # all 200 pairs released: as multisets the labels are the device's, but the row order differs per task
    assert sorted(left) == sorted(data.labels[:, 0].tolist()) and sorted(right) == sorted(data.labels[:, 1].tolist())
    aligned = [(int(a), int(b)) for a, b in zip(left, right, strict=True)]
    assert sorted(aligned) != sorted(map(tuple, data.labels.tolist()))


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    cfg = fed_cfg("federated.audit_every=1")
    grid = InProcessGrid(client_app, 3, out / "devices", policy=DevicePolicy.from_config(cfg))
    summary = run_federated(grid, cfg, out)
    return out, summary, grid


@pytest.mark.slow
def test_round_loop_writes_rows_checkpoints_and_summary(federated_run):
    out, summary, grid = federated_run
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["sampled"] == 3 and r["answered"] == 3 and r["aggregated"] for r in rows)
    assert rows[0]["epsilon_max"] < rows[1]["epsilon_max"] <= 8.0 + 0.05
    assert (out / "checkpoints" / "round_002.ckpt").exists()
    (interim,) = read_jsonl(out / "audits.jsonl")  # audit_every=1: round 1 audited, the last by the final audit
    assert interim["round"] == 1 and "left->right" in interim["cross_task_attack"]
    m = summary["methods"]["metamorphosis"]
    assert set(m["cross_task_attack"]) == {"left->right", "right->left"}
    devices = summary["federated"]["device_privacy"]
    assert len(devices) == 3 and all(d["rounds_trained"] == 2 for d in devices.values())
    assert m["dp_sgd"]["epsilon"] == max(d["epsilon"] for d in devices.values())
    # each device's Opacus epsilon, re-accounted on the server by dp-accounting over the steps it reported
    for d in devices.values():
        assert d["steps"] > 0 and d["epsilon"] == pytest.approx(d["epsilon_dp_accounting"], rel=0.02)
    assert m["dp_sgd"]["epsilon_max_relative_difference"] < 0.02
    local = summary["federated"]["local_test_accuracy"]  # the evaluate handler, aggregated by the strategy
    assert set(local) == {"left", "right"} and all(0 <= v <= 1 for v in local.values())
    # every train message carries the heads with the encoder, in one record
    train_msgs = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert train_msgs and all(any(k.startswith("heads.") for k in m.content["arrays"]) for m in train_msgs)
    # every release counted: one per pair (the default cap), all 3 x 200 pairs over round 0 and 2 rounds
    assert rows[-1]["releases_per_pair_max"] == 1 and rows[-1]["feature_rows_received"] == 600
    assert m["feature_dp"]["releases_per_pair"] == 1
    assert m["feature_dp"]["epsilon_per_pair"] == pytest.approx(m["feature_dp"]["epsilon_all_tasks"])
    assert m["attacker"]["server_saw_releases"] == 600 and m["attacker"]["train_samples"] >= 600
    assert summary["randomness"] == {
        "source": "os_entropy",
        "private_against_server": True,
        "note": "OS CSPRNG on the device",
    }
    assert "ssim_features_and_label" in m["reconstruction"]["left"]


@pytest.mark.slow
def test_an_uncapped_run_composes_every_release_and_runs_the_averaging_attacker(tmp_path):
    cfg = fed_cfg("feature_dp.max_releases_per_pair=none", "federated.feature_samples_per_device=150")
    summary = run_federated(
        InProcessGrid(client_app, 3, tmp_path / "devices", policy=DevicePolicy.from_config(cfg)), cfg, tmp_path
    )
    m = summary["methods"]["metamorphosis"]
    k = summary["history"][-1]["releases_per_pair_max"]
    assert k == 3  # 3 queries of 150 of 200 pairs, least released first: ceil(450 / 200)
    assert (
        m["feature_dp"]["releases_per_pair"] == k
        and m["feature_dp"]["epsilon_per_pair"] > m["feature_dp"]["epsilon_all_tasks"]
    )
    averaged = m["cross_task_attack_averaged"]
    assert set(averaged) == {"left->right", "right->left"}
    assert all(
        v["releases_averaged"] == k and v["train_rows"] == m["attacker"]["train_samples"] // k
        for v in averaged.values()
    )


def _poison(kind):
    def tamper(node, reply):
        if node == 101 and "arrays" in reply.content.array_records:
            if kind == "nan":
                sd = reply.content["arrays"].to_torch_state_dict()
                sd[next(iter(sd))][0] = float("nan")
                reply.content["arrays"] = ArrayRecord(sd)
            else:
                del reply.content["arrays"]
        return reply

    return tamper


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nan", "missing"])
def test_malformed_or_nan_update_is_rejected_and_the_round_goes_on(tmp_path, kind, caplog):
    cfg = fed_cfg("federated.rounds=1", "federated.min_train_devices=2")
    run_federated(
        InProcessGrid(client_app, 3, tmp_path / "devices", tamper=_poison(kind), policy=DevicePolicy.from_config(cfg)),
        cfg,
        tmp_path,
        audit=False,
    )
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert (row["answered"], row["rejected"], row["aggregated"]) == (2, 1, True)
    assert "rejected reply of node 101" in caplog.text


@pytest.mark.slow
def test_too_few_valid_replies_are_not_aggregated(tmp_path):
    cfg = fed_cfg("federated.rounds=1", "federated.min_train_devices=3")
    grid = InProcessGrid(
        client_app, 3, tmp_path / "devices", tamper=_poison("nan"), policy=DevicePolicy.from_config(cfg)
    )
    summary = run_federated(grid, cfg, tmp_path, audit=False)
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert row["aggregated"] is False
    # every update left its device and is counted; none went into an aggregate
    devices = summary["device_privacy"]
    assert len(devices) == 3 and all(d["epsilon"] > 0 and d["rounds_trained"] == 0 for d in devices.values())


@pytest.mark.slow
def test_over_budget_devices_decline_are_never_aggregated_and_the_operator_sees_why(tmp_path, caplog):
    # sigma 1.5, 6 steps a round at q = 1/3: epsilon 3.64 after one round, 4.92 after two > budget 4
    cfg = fed_cfg(
        "dp_sgd.target_epsilon=none",
        "dp_sgd.noise_multiplier=1.5",
        "federated.device_epsilon_budget=4.0",
        "federated.local_epochs=2",
    )
    run_federated(
        InProcessGrid(client_app, 3, tmp_path / "devices", policy=DevicePolicy.from_config(cfg)),
        cfg,
        tmp_path,
        audit=False,
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0]["declined"] == 0 and rows[0]["epsilon_max"] <= 4.0
    assert rows[1]["declined"] == 3 and rows[1]["answered"] == 0 and rows[1]["aggregated"] is False
    assert rows[1]["epsilon_max"] == rows[0]["epsilon_max"]  # no update past the budget ever left a device
    declines = [r.getMessage() for r in caplog.records if "declined to train" in r.getMessage()]
    assert len(declines) == 3 and all("round 2" in line and "budget" in line for line in declines)


def test_synthetic_set_splits_across_devices_iid_and_skewed_by_the_chosen_task():
    cfg = fed_cfg('data.name="synthetic"')
    shares = [device_datasets(cfg.data, cfg.federated, d, 0)[0] for d in range(3)]
    assert sum(len(s) for s in shares) == cfg.data.train_pairs
    assert shares[0].task_names == ["shape", "colour"] and shares[0].image_shape == (3, 16, 16)
    skewed = fed_cfg(
        'data.name="synthetic"',
        "federated.partitioning=pathological",
        "federated.classes_per_device=1",
        'federated.partition_task="colour"',
    )
    parts = [device_datasets(skewed.data, skewed.federated, d, 0)[0] for d in range(3)]
    assert 0 < sum(len(p) for p in parts) <= skewed.data.train_pairs  # unassigned colours are left out
    for p in parts:  # one colour per device, every shape
        assert len(p.labels[:, 1].unique()) == 1 and len(p.labels[:, 0].unique()) == 3
    with pytest.raises(ConfigError, match="partition_task='size' is not a task"):
        fed_cfg('data.name="synthetic"', 'federated.partition_task="size"')


def _budget_cfg():
    # sigma 1.5, 6 steps a round at q = 1/3: epsilon 3.64 after one round, 4.92 after two > budget 4
    return fed_cfg(
        "dp_sgd.target_epsilon=none",
        "dp_sgd.noise_multiplier=1.5",
        "federated.device_epsilon_budget=4.0",
        "federated.local_epochs=2",
    )


def test_a_restarted_device_keeps_its_spent_epsilon_and_declines_past_its_budget(tmp_path):
    cfg = _budget_cfg()
    first = client_app(train_message(cfg, 1)[0], device_context(tmp_path))
    spent = first.content["metrics"]["epsilon"]
    assert first.content["metrics"]["declined"] == 0 and 3.5 < spent < 4.0
    # the process restarts: Flower's in-memory context.state is gone, the state folder is not
    restarted = client_app(train_message(cfg, 2)[0], device_context(tmp_path))
    m = restarted.content["metrics"]
    assert m["declined"] == 1 and "budget" in restarted.content["status"]["declined"]
    assert m["epsilon"] == spent and m["steps"] == first.content["metrics"]["steps"]
    assert DeviceState.load(tmp_path).history.steps == m["steps"]
    # control: the same request to a device whose state folder is empty trains (the folder is what counts)
    assert client_app(train_message(cfg, 2)[0], device_context(tmp_path / "wiped")).content["metrics"]["declined"] == 0


def test_a_repeated_request_gets_the_same_reply_and_costs_nothing(tmp_path):
    cfg = fed_cfg()
    msg, _ = train_message(cfg, 1)
    first = client_app(msg, device_context(tmp_path))
    steps = DeviceState.load(tmp_path).history.steps
    again = client_app(train_message(cfg, 1)[0], device_context(tmp_path))  # the same round, asked again
    assert DeviceState.load(tmp_path).history.steps == steps  # not counted twice: nothing new was released
    for key, array in first.content["arrays"].items():
        assert array.data == again.content["arrays"][key].data  # byte for byte
    assert dict(first.content["metrics"]) == dict(again.content["metrics"])
    changed = client_app(train_message(fed_cfg("federated.local_lr=0.002"), 1)[0], device_context(tmp_path))
    assert DeviceState.load(tmp_path).history.steps == 2 * steps  # any other request trains, and counts
    assert changed.content["metrics"]["steps"] == 2 * steps


def test_a_device_outside_a_simulation_needs_a_state_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    context = device_context(tmp_path)
    del context.node_config["state-dir"]
    with pytest.raises(NoStateFolder, match="state-dir"):
        client_app(train_message(fed_cfg(), 1)[0], context)


@pytest.mark.slow(seconds=20)
def test_a_run_that_crashes_in_round_3_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    # seeded device randomness (a simulation): the resumed run can then be compared bit for bit
    monkeypatch.setenv(SIMULATION_ENV, "1")
    cfg = fed_cfg("federated.rounds=4", "randomness.source=seeded", "federated.strategy.name=fedadam")
    whole = tmp_path / "whole"
    run_federated(
        InProcessGrid(client_app, 3, whole / "devices", policy=DevicePolicy.from_config(cfg)), cfg, whole, audit=False
    )

    crashed = tmp_path / "crashed"
    real_evaluate = round_loop.evaluate

    def crash_in_round_3(fed, rnd):  # after the devices trained and released round 3, before its checkpoint
        if rnd == 3:
            raise RuntimeError("power cut")
        return real_evaluate(fed, rnd)

    monkeypatch.setattr(round_loop, "evaluate", crash_in_round_3)
    with pytest.raises(RuntimeError, match="power cut"):
        run_federated(
            InProcessGrid(client_app, 3, crashed / "devices", policy=DevicePolicy.from_config(cfg)),
            cfg,
            crashed,
            audit=False,
        )
    assert [r["round"] for r in read_jsonl(crashed / "metrics.jsonl")] == [1, 2]
    monkeypatch.setattr(round_loop, "evaluate", real_evaluate)
    # a new server process (new node ids, new grid) and the devices' state folders as they were left
    run_federated(
        InProcessGrid(client_app, 3, crashed / "devices", policy=DevicePolicy.from_config(cfg)),
        cfg,
        crashed,
        audit=False,
        resume=True,
    )

    expected, got = read_jsonl(whole / "metrics.jsonl"), read_jsonl(crashed / "metrics.jsonl")
    assert [r["round"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(got, expected, strict=True):  # epsilon, releases, counts: exactly the same, round by round
        assert {k: v for k, v in a.items() if k != "seconds" and not k.startswith("test_acc")} == {
            k: v for k, v in b.items() if k != "seconds" and not k.startswith("test_acc")
        }
        # accuracy: two runs on 2 CPU threads differ in the last float bits (1e-7 already after round 1,
        # with no crash involved), which can flip a borderline test pair
        assert all(a[k] == pytest.approx(b[k], abs=0.02) for k in a if k.startswith("test_acc"))
    for device in range(3):  # round 3, asked again, was answered from the devices' saved replies
        assert (
            DeviceState.load(crashed / "devices" / str(device)).history
            == DeviceState.load(whole / "devices" / str(device)).history
        )
    summary_whole = json.loads((whole / "summary.json").read_text())["dp_sgd"]
    summary_crashed = json.loads((crashed / "summary.json").read_text())["dp_sgd"]
    assert summary_crashed["epsilon"] == summary_whole["epsilon"]
    w1 = load_run(crashed / "checkpoints" / "round_004.ckpt").generator
    w2 = load_run(whole / "checkpoints" / "round_004.ckpt").generator
    # FedAdam's moments came back with the checkpoint (bit for bit on the same replies: test_strategies.py);
    # here within the two runs' float noise
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
