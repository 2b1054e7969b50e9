import pytest
import torch

from fl_metamorphosis.config import FeatureDPConfig
from fl_metamorphosis.privacy.feature_noise import account_release, analytic_gaussian_epsilon, gaussian_epsilon
from fl_metamorphosis.privacy.release_ledger import ReleaseLedger


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_least_released_pairs_go_first_so_the_maximum_stays_low():
    ledger = ReleaseLedger(10)
    for q in range(7):
        ledger.record(ledger.choose(4, queries_left=100, cap=None, generator=_gen(q)))
    assert ledger.total_releases == 28 and ledger.max_releases == 3  # ceil(28 / 10): as even as it gets


def test_the_cap_is_never_exceeded_and_spread_over_the_queries_left():
    ledger = ReleaseLedger(100)
    sizes = []
    for q in range(6):
        chosen = ledger.choose(80, queries_left=5 - q, cap=2, generator=_gen(q))
        sizes.append(len(chosen))
        ledger.record(chosen)
    assert sizes == [40, 40, 40, 40, 40, 0]  # 200 releases allowed, spread over 5 queries, then none
    assert ledger.max_releases == 2 and ledger.total_releases == 200


def test_state_dict_round_trip_and_a_changed_dataset_is_refused():
    ledger = ReleaseLedger(20)
    ledger.record(ledger.choose(5, 3, cap=1, generator=_gen()))
    restored = ReleaseLedger(20)
    restored.load_state_dict(ledger.state_dict())
    assert torch.equal(restored.counts, ledger.counts) and restored.queries == 1
    with pytest.raises(ValueError, match="pairs"):
        ReleaseLedger(21).load_state_dict(ledger.state_dict())


@pytest.mark.parametrize("releases", [1, 2, 7, 14])
def test_composed_feature_epsilon_matches_the_closed_form(releases):
    # n Gaussian mechanisms of one std compose exactly into one of std / sqrt(n)
    pld = gaussian_epsilon(0.2, 2.0, 1e-5, releases=releases)
    assert pld == pytest.approx(analytic_gaussian_epsilon(0.2, 2.0, 1e-5, releases), rel=2e-3)


def test_account_release_composes_every_release_of_the_most_released_pair():
    rep = account_release(FeatureDPConfig(noise_std=0.5), num_tasks=2, releases_per_pair=3)
    assert rep.releases_per_pair == 3
    assert rep.epsilon_per_task_owner == pytest.approx(analytic_gaussian_epsilon(0.5, 2.0, 1e-5, 3), rel=2e-3)
    assert rep.epsilon_per_pair == pytest.approx(analytic_gaussian_epsilon(0.5, 2.0, 1e-5, 6), rel=2e-3)
    assert rep.epsilon < rep.epsilon_all_tasks < rep.epsilon_per_pair
    one = account_release(FeatureDPConfig(noise_std=0.5), num_tasks=2)
    assert one.epsilon_per_pair == pytest.approx(one.epsilon_all_tasks)
