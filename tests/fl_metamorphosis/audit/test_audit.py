import numpy as np
import pytest
import torch

from fl_metamorphosis.audit import cross_task_attacks, dependence_report, image_scores
from fl_metamorphosis.audit.reconstruction_attack import reconstruction_attack
from fl_metamorphosis.config import AuditConfig, ModelConfig


def _labels(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, size=(n, 2))


def _one_hot(y):
    return np.eye(10)[y]


def test_probe_finds_a_leak_and_reports_chance_on_noise():
    ytr, yte = _labels(1500, 0), _labels(500, 1)
    # task "a"'s feature carries task b's label (a leak); task "b"'s feature is pure noise.
    rng = np.random.default_rng(2)

    def feats(y):
        return np.stack([_one_hot(y[:, 1]) + 0.1 * rng.normal(size=(len(y), 10)), rng.normal(size=(len(y), 10))], 1)

    cfg = AuditConfig(probe_max_iter=50, boosting_max_iter=20)
    res = cross_task_attacks(feats(ytr), ytr, feats(yte), yte, ["a", "b"], cfg)
    leak, blind = res["a->b"], res["b->a"]
    assert set(leak["families"]) == {"linear", "mlp", "knn", "boosting"}
    # the headline is the strongest family, inside its own interval, and far from chance only for the leak
    assert leak["accuracy"] == max(leak["families"].values()) > 0.95
    assert leak["ci95"][0] <= leak["accuracy"] <= leak["ci95"][1] and leak["p_value"] < 1e-6
    assert abs(blind["accuracy"] - blind["chance"]) < 0.07
    assert blind["p_value"] > 0.01
    assert 0.08 < blind["chance"] < 0.15


def test_reconstruction_scores_copy_high_noise_low():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(600, 1, 8, 16, generator=g).round()  # binary images: hard to guess
    copy, _ = reconstruction_attack(imgs[:500], imgs[:500], imgs[500:], imgs[500:], epochs=40, ssim_kernel=7)
    noise = torch.randn(600, 16, generator=g)
    blind, _ = reconstruction_attack(noise[:500], imgs[:500], noise[500:], imgs[500:], epochs=40, ssim_kernel=7)
    assert copy["ssim"] > 0.6 and copy["psnr"] > blind["psnr"] + 3
    assert blind["ssim"] < 0.1


def test_image_scores_perfect_and_kernel_check():
    x = torch.rand(4, 1, 8, 16)
    assert image_scores(x, x, 7)["ssim"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="ssim_kernel"):
        image_scores(x, x, 9)


def test_dependence_report_sees_input_copy_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 8, 16, generator=g)
    feats = torch.stack([x.flatten(1)[:, :40] * 2, torch.randn(300, 40, generator=g)], 1)
    rep = dependence_report(feats, x, ["copy", "noise"])
    assert rep["copy~input"] > 0.5 and abs(rep["noise~input"]) < 0.05 and abs(rep["copy~noise"]) < 0.05


def test_membership_attack_sees_memorised_samples_and_chance_on_strangers():
    from fl_metamorphosis.audit.membership_attack import membership_auc
    from fl_metamorphosis.model import build_heads

    torch.manual_seed(0)
    heads = build_heads((16,), [4], ModelConfig(head_hidden=128))
    members, outsiders = torch.randn(64, 1, 16), torch.randn(64, 1, 16)
    m_labels, o_labels = torch.randint(0, 4, (64, 1)), torch.randint(0, 4, (64, 1))
    untrained = membership_auc(heads, members, m_labels, outsiders, o_labels)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(300):  # random labels: only memorisation can fit them
        opt.zero_grad()
        heads[0].per_sample_loss(heads[0](members[:, 0]), m_labels[:, 0]).mean().backward()
        opt.step()
    trained = membership_auc(heads, members, m_labels, outsiders, o_labels)
    assert trained["auc"] > 0.95 and trained["members"] == 64
    assert abs(untrained["auc"] - 0.5) < 0.15


def test_step_cap_keeps_whole_epochs_within_the_budget():
    from fl_metamorphosis.audit.budget import epochs_within

    assert epochs_within(6_000, 128, 30, None) == 30
    assert epochs_within(6_000, 128, 30, 2_000) == 30  # 47 steps an epoch: 1,410 steps fit
    assert epochs_within(44_000, 128, 30, 2_000) == 5  # 344 steps an epoch
    assert epochs_within(10**6, 128, 30, 2_000) == 1  # always at least one pass
    assert epochs_within(50, 200, 7, 3) == 3  # a batch larger than the data is one step


def test_label_only_floor_is_cached_per_attacker_data(tiny_cfg, tiny_split, tmp_path, monkeypatch):
    from fl_metamorphosis.audit import AttackData, label_only_floor, run_audit

    audit = tiny_cfg.audit.model_copy(update={"cache_dir": str(tmp_path)})
    data = AttackData.draw(tiny_split, audit, 0)
    first = label_only_floor(data, audit, 0)
    assert len(list(tmp_path.glob("label_only_floor_*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached floor was trained again")

    monkeypatch.setattr(run_audit, "reconstruction_attack", no_training)
    assert label_only_floor(data, audit, 0) == first
    other = AttackData.draw(tiny_split, audit, 0, attacker_samples=len(data.attacker) + 50)
    with pytest.raises(AssertionError, match="trained again"):  # different attacker data: not a hit
        label_only_floor(other, audit, 0)


def test_the_label_floor_is_what_one_task_s_label_predicts_of_the_other():
    from fl_metamorphosis.audit.cross_task_probe import label_floor

    rng = np.random.default_rng(0)
    own = rng.integers(0, 3, 20_000)
    copy = rng.random(20_000) < 0.6  # the other task copies this one 60 % of the time, else uniform
    other = np.where(copy, own, rng.integers(0, 3, 20_000))
    floor = label_floor(own[:10_000], other[:10_000], own[10_000:], other[10_000:])
    assert floor == pytest.approx(0.6 + 0.4 / 3, abs=0.015)
    independent = rng.integers(0, 3, 20_000)
    assert label_floor(own[:10_000], independent[:10_000], own[10_000:], independent[10_000:]) < 0.36
    unseen = label_floor(np.array([0, 0, 1]), np.array([2, 2, 1]), np.array([3]), np.array([2]))
    assert unseen == 1.0  # a label never seen in training falls back to the majority class


def test_the_server_s_release_count_is_capped_by_the_pairs_the_devices_hold():
    from fl_metamorphosis.audit.saved_run import server_seen_releases
    from fl_metamorphosis.config import build_config

    cfg = build_config(
        {},
        [
            "federated.num_devices=4",
            "federated.fraction_train=0.5",
            "federated.rounds=9",
            "federated.feature_samples_per_device=100",
            "feature_dp.max_releases_per_pair=2",
        ],
    )
    assert server_seen_releases(cfg, train_size=10_000) == 100 * 2 * 10  # asked: 2 devices, rounds 0..9
    # a folder with fewer images than data.train_pairs: at most 2 releases of each image it holds
    assert server_seen_releases(cfg, train_size=300) == 600
