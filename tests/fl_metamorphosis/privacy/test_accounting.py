"""The one accounting module: step histories, both accountants, and the server's ledger."""

import pytest
from opacus.accountants import RDPAccountant

from fl_metamorphosis.privacy import ServerLedger, StepHistory, reference_epsilon


def test_step_history_merges_like_opacus_and_round_trips_through_an_accountant():
    h = StepHistory().extended(1.0, 0.1, 5)
    assert h.entries == ((1.0, 0.1, 5),)
    assert h.extended(1.0, 0.1, 5).entries == ((1.0, 0.1, 10),)
    assert h.extended(2.0, 0.1, 5).entries == ((1.0, 0.1, 5), (2.0, 0.1, 5))
    assert StepHistory().epsilon(1e-5) == 0.0 and StepHistory().extended(1.0, 0.1, 0).entries == ()
    # Opacus' own accountant, stepped for real, holds the same history, and state_dict brings it back
    acc = RDPAccountant()
    for _ in range(7):
        acc.step(noise_multiplier=1.1, sample_rate=0.05)
    history = StepHistory.from_accountant(acc)
    assert history.entries == ((1.1, 0.05, 7),)
    assert history.to_accountant().get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5))
    assert StepHistory.of(history.as_list()) == history


def test_opacus_and_dp_accounting_agree_per_pair_and_per_group():
    h = StepHistory.of([(1.0, 0.02, 500), (1.3, 0.02, 200)])
    assert h.epsilon(1e-5) == pytest.approx(h.epsilon_dp_accounting(1e-5), rel=0.02)
    assert h.epsilon(1e-5, grouped=True) == pytest.approx(h.epsilon_dp_accounting(1e-5, grouped=True), rel=0.02)
    assert h.epsilon(1e-5, grouped=True) > 2 * h.epsilon(1e-5)  # group privacy: 2e at a smaller delta
    one = StepHistory.of([(1.0, 0.02, 500)])
    assert one.epsilon_dp_accounting(1e-5) == pytest.approx(reference_epsilon(1.0, 0.02, 500, 1e-5))


def _train(ledger, device, steps, round_steps):
    return ledger.record_train(
        device,
        epsilon=StepHistory.of([(1.0, 0.1, steps)]).epsilon(1e-5),
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=steps,
        round_steps=round_steps,
        grouped=False,
    )


def test_the_server_ledger_keeps_the_larger_epsilon_when_a_device_lost_its_state():
    ledger = ServerLedger(1e-5)
    assert _train(ledger, 0, 10, 10) is None and _train(ledger, 0, 20, 10) is None
    agreed = ledger.epsilon(0)
    # the device's state was deleted: it starts again from 0 steps and reports 10
    message = _train(ledger, 0, 10, 10)
    assert message and "lost or reset" in message
    assert ledger.epsilon(0) == pytest.approx(StepHistory.of([(1.0, 0.1, 30)]).epsilon(1e-5))
    assert ledger.epsilon(0) > agreed
    row = ledger.summary()["0"]
    assert row["steps"] == 30 and row["epsilon_reported"] < row["epsilon"] and "disagreement" in row
    restored = ServerLedger(1.0)
    restored.load_state_dict(ledger.state_dict())
    assert restored.summary() == ledger.summary() and restored.max_epsilon == ledger.max_epsilon
