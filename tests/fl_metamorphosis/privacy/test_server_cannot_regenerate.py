"""Play the server: it knows the config, the round, the device id, the global weights and (stronger than
any real server) the device's data. It tries to regenerate the device's noise and subtract it.

Positive control: with ``randomness.source = "seeded"`` (allowed in simulation only) a replay of the
handler IS the device's output, bit for bit: the server could subtract the noise. With the default OS
entropy it cannot: replays differ, and every seed the server could derive leaves the "recovered"
features as far from every clean feature as independent noise would.
"""

import math
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import operator_policy_file
from device_messages import fed_cfg, train_message
from flwr.app import Context, RecordDict

from clients.client_app import app as client_app
from clients.device_app import SIMULATION_ENV, SeededNoiseRefused
from fl_metamorphosis.data.partition import device_datasets
from fl_metamorphosis.privacy import clip_features
from fl_metamorphosis.privacy.randomness import randomness_for

ALL_PAIRS = ["feature_dp.max_releases_per_pair=none", "federated.feature_samples_per_device=200"]


def _context(cfg):
    """A device of its own each call (a fresh state folder): no earlier reply to send again. Its policy is
    the config (as in a simulation): what is tested here is the noise, not the policy."""
    state = tempfile.mkdtemp(prefix="device-")
    node_config = {"partition-id": 0, "num-partitions": 3, "state-dir": state}
    node_config["policy-file"] = operator_policy_file(Path(state) / "owner", cfg)
    return Context(run_id=1, node_id=101, node_config=node_config, state=RecordDict(), run_config={})


def _features(cfg, rnd=1):
    msg, generator = train_message(cfg, rnd)
    msg.metadata.__dict__["_message_type"] = "query.features"
    reply = client_app(msg, _context(cfg))
    return {n: torch.from_numpy(reply.content[f"task.{n}"]["features"].numpy()) for n in ("left", "right")}, generator


def _clean(cfg, generator):
    """What the server can compute itself: the clipped, un-noised features of every pair of the device."""
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    with torch.no_grad():
        feats, _ = generator.eval()(data.images)
    return clip_features(feats, cfg.feature_dp.clip_norm)


def _server_guesses(cfg, shape, device=0, rnd=1):
    """Every noise tensor a server could derive from what it knows."""
    old = torch.Generator().manual_seed(cfg.train.seed * 7_919 + device * 31 + rnd)  # this project's former seed
    torch.randperm(200, generator=old)
    old_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=old))
    yield torch.randn(shape, generator=torch.Generator().manual_seed(old_seed)) * cfg.feature_dp.noise_std
    yield randomness_for("seeded", cfg.train.seed, device, rnd, 2).normal(shape, cfg.feature_dp.noise_std)
    yield torch.randn(shape, generator=torch.Generator().manual_seed(cfg.train.seed)) * cfg.feature_dp.noise_std


def test_seeded_noise_is_reproducible_so_only_simulation_may_use_it(monkeypatch):
    cfg = fed_cfg(*ALL_PAIRS, "randomness.source=seeded")
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    with pytest.raises(SeededNoiseRefused, match="randomness.source"):
        _features(cfg)
    monkeypatch.setenv(SIMULATION_ENV, "1")
    first, _ = _features(cfg)
    again, _ = _features(cfg)
    assert all(torch.equal(first[t], again[t]) for t in first)  # the server's replay is the device's release


def test_the_server_cannot_regenerate_the_feature_noise(monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")  # even where seeded noise would be allowed, the default is secret
    cfg = fed_cfg(*ALL_PAIRS)
    released, generator = _features(cfg)
    again, _ = _features(cfg)
    clean = _clean(cfg, generator)
    sigma, dim = cfg.feature_dp.noise_std, cfg.model.feature_dim
    for t, name in enumerate(("left", "right")):
        assert not torch.equal(released[name], again[name])  # a replay of the same message: fresh noise
        # each released row lies a noise's length from its own clean feature (sigma * sqrt(dim))
        nearest = torch.cdist(released[name], clean[:, t]).min(1).values
        assert nearest.median() == pytest.approx(sigma * math.sqrt(dim), rel=0.15)
        for guess in _server_guesses(cfg, released[name].shape):
            recovered = released[name] - guess
            distance = torch.cdist(recovered, clean[:, t]).min(1).values
            # a right guess would land on a clean feature (distance ~1e-7); a wrong one adds its own noise
            assert distance.min() > 0.5 * sigma * math.sqrt(dim)
            assert distance.median() > 1.2 * sigma * math.sqrt(dim)


def _train_weights(cfg, rnd=1):
    msg, _ = train_message(cfg, rnd)
    reply = client_app(msg, _context(cfg))
    return {k: torch.from_numpy(v.numpy()) for k, v in reply.content["arrays"].items()}


def _relative_distance(a, b):
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    return math.sqrt(diff / sum(float(b[k].pow(2).sum()) for k in b))


def test_the_server_cannot_replay_dp_sgd(monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")
    torch.set_num_threads(1)  # one reduction order: a seeded replay must then be exact
    try:
        seeded = fed_cfg("randomness.source=seeded")
        assert _relative_distance(_train_weights(seeded), _train_weights(seeded)) == 0.0
        secret = fed_cfg()
        a, b = _train_weights(secret), _train_weights(secret)
        # the same message twice: different Poisson batches and Gaussian noise, so a different update
        assert _relative_distance(a, b) > 1e-3
        # the server's best replay (the seeded stream of the same round and device) is no closer to the
        # device's update than a second secret run is
        guess = _train_weights(seeded)
        assert _relative_distance(a, guess) > 0.5 * _relative_distance(a, b)
    finally:
        torch.set_num_threads(2)
