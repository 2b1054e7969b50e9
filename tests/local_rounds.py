"""A device's local round as the tests call it: one config field changed, the rest from the test's config."""

from fl_metamorphosis.privacy.randomness import Randomness
from fl_metamorphosis.training.local_round import LocalUpdate, privacy_plan, run_local_round


def local_round(
    cfg, data, gen_w, head_w, history, *, seed, budget=100.0, device_heads="frozen", mu=0.0, sigma=1.0
) -> LocalUpdate:
    """One local epoch with the handler's own call: the plan built once, everything by keyword."""
    federated = cfg.federated.model_copy(
        update={"device_epsilon_budget": budget, "local_epochs": 1, "device_heads": device_heads}
    )
    cfg = cfg.model_copy(update={"federated": federated})
    return run_local_round(
        cfg=cfg,
        data=data,
        plan=privacy_plan(cfg, data),
        generator_weights=gen_w,
        head_weights=head_w,
        history=history,
        noise_multiplier=sigma,
        randomness=Randomness.seeded(seed),
        proximal_mu=mu,
    )
