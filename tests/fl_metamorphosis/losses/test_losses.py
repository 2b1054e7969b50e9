import numpy as np
import pytest
import torch

from fl_metamorphosis.config import ModelConfig
from fl_metamorphosis.losses import Objective, batch_decorrelation, per_sample_overlap, u_distance_correlation_sqr
from fl_metamorphosis.model import build_heads


@pytest.mark.filterwarnings("ignore:Cannot cache compiled function")
def test_distance_correlation_matches_dcor_reference(monkeypatch):
    # Imported here, not at the top: dcor compiles its numba kernels at import (about 25 s the first time,
    # 6 s from numba's cache), and every test worker imports each module to collect it. One worker pays it,
    # and without LLVM's optimisation passes (NUMBA_OPT=0, read when numba is first imported) half of it:
    # a reference needs its values, which are the same, not its speed.
    monkeypatch.setenv("NUMBA_OPT", "0")
    import dcor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5))
    y = np.concatenate([x[:, :2] ** 2, rng.normal(size=(80, 3))], axis=1)
    ours = float(u_distance_correlation_sqr(torch.from_numpy(x), torch.from_numpy(y)))
    assert ours == pytest.approx(dcor.u_distance_correlation_sqr(x, y), abs=1e-6)


def test_near_zero_for_independent_and_high_for_nonlinear_dependence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g)
    independent = u_distance_correlation_sqr(x, torch.randn(512, 32, generator=g))
    assert abs(float(independent)) < 0.02
    # y = x^2 has zero linear correlation with x, yet is a function of it.
    x1 = torch.randn(512, 1, generator=g)
    assert abs(float(torch.corrcoef(torch.cat([x1, x1**2], 1).T)[0, 1])) < 0.15
    assert float(u_distance_correlation_sqr(x1, x1**2)) > 0.15
    assert float(u_distance_correlation_sqr(x, x)) == pytest.approx(1.0, abs=1e-5)


def test_batch_decorrelation_loss_zero_for_independent_tasks_not_for_dependent():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(512, 16, generator=g), torch.randn(512, 16, generator=g)
    independent = batch_decorrelation(torch.stack([a, b], 1))
    dependent = batch_decorrelation(torch.stack([a, torch.tanh(a) + 0.1 * b], 1))
    assert float(independent) < 0.02 and float(dependent) > 0.5
    with_input = batch_decorrelation(torch.stack([a, b], 1), inputs=a, input_weight=1.0)
    assert float(with_input) > 0.9  # task 0's feature IS the input


def test_decorrelation_is_differentiable_and_finite():
    torch.manual_seed(0)
    a = torch.randn(32, 8, requires_grad=True)
    f = torch.stack([a, torch.tanh(a) + 0.1 * torch.randn(32, 8)], 1)  # dependent: estimate > 0, not clamped
    loss = batch_decorrelation(f)
    loss.backward()
    assert loss.item() > 0.1
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_per_sample_overlap():
    disjoint = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    shared = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    assert float(per_sample_overlap(disjoint)) == 0.0
    assert float(per_sample_overlap(shared)) == pytest.approx(0.25)


def _per_sample_grads(objective: Objective, feats: torch.Tensor, att: torch.Tensor, labels, heads):
    """Jacobian of the batch loss's per-sample terms w.r.t. every sample's feature."""

    def losses(f):
        per, _ = objective.per_sample(heads, f, att, labels)
        # Spread the batch term over samples as Opacus would see it through the mean.
        return per + objective.batch_term(f, f.flatten(1)) * len(f)

    return torch.autograd.functional.jacobian(losses, feats)  # [B, B, T, D]


@pytest.mark.parametrize("form", ["per_sample", "batch"])
def test_dp_guard_no_sample_influences_another_samples_loss(form):
    """The loss under DP-SGD must be a sum of per-sample terms: d loss_i / d x_j = 0 for i != j.

    Opacus clips each sample's gradient of the summed loss; if loss_i depends on sample j, sample j also
    acts through every other sample's clipped gradient and its influence is no longer bounded.
    """
    torch.manual_seed(0)
    b, t, d = 6, 2, 8
    feats = torch.randn(b, t, d)
    att = torch.softmax(torch.randn(b, t + 1, d), 1)[:, 1:]
    labels = torch.randint(0, 3, (b, t))
    heads = build_heads((d,), [3, 3], ModelConfig())
    jac = _per_sample_grads(Objective(form, 1.0), feats, att, labels, heads)
    off_diagonal = jac.abs().sum(dim=(2, 3)) * (1 - torch.eye(b))
    if form == "per_sample":
        assert float(off_diagonal.max()) == 0.0
    else:  # the batch statistic couples the samples: exactly why config forbids it under DP-SGD
        assert float(off_diagonal.max()) > 0.0


def test_dp_training_uses_the_per_sample_form():
    from fl_metamorphosis.config import build_config
    from fl_metamorphosis.methods import method_plan

    cfg = build_config()
    assert cfg.dp_sgd.enabled and method_plan(cfg, "metamorphosis").objective.form == "per_sample"
    assert method_plan(build_config(None, ["dp_sgd.enabled=false"]), "metamorphosis").objective.form == "batch"
