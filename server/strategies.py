"""Strategy registry: a name in the config -> one of Flower's own strategies, with its parameters.

The server loop calls the strategy's ``configure_train`` (sampling, FedProx's ``proximal-mu``) and
``aggregate_train`` (the aggregation rule) itself, so every Flower strategy plugs in unchanged.
"""

from __future__ import annotations

from flwr.serverapp import strategy as fl

from fl_metamorphosis.config import FederatedConfig


def build_strategy(fed: FederatedConfig) -> fl.FedAvg:
    """The configured strategy; its parameters were validated with the config (``FederatedConfig``)."""
    s = fed.strategy
    common = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": fed.fraction_train,
        "min_train_nodes": fed.min_train_devices,  # <= num_devices, checked by FederatedConfig
        "min_evaluate_nodes": fed.min_train_devices,
        # a round waits until this many devices are online (a real fleet may set fewer than all; a simulated
        # fleet has only its available devices online, and a round with too few is skipped)
        "min_available_nodes": fed.online_devices_needed(),
    }
    match s.name:
        case "fedavg":
            return fl.FedAvg(**common)
        case "fedavgm":
            return fl.FedAvgM(**common, server_learning_rate=s.server_learning_rate, server_momentum=s.server_momentum)
        case "fedprox":
            return fl.FedProx(**common, proximal_mu=s.proximal_mu)
        case "fedadam":
            return fl.FedAdam(**common, eta=s.eta, eta_l=s.eta_l, tau=s.tau)
        case "fedyogi":
            return fl.FedYogi(**common, eta=s.eta, eta_l=s.eta_l, tau=s.tau)
        case "fedadagrad":
            return fl.FedAdagrad(**common, eta=s.eta, eta_l=s.eta_l, tau=s.tau)
        case "fedmedian":
            return fl.FedMedian(**common)
        case "fedtrimmedavg":
            return fl.FedTrimmedAvg(**common, beta=s.beta_trim)
        case "krum":
            return fl.Krum(**common, num_malicious_nodes=s.num_malicious_nodes)
        case "multikrum":
            return fl.MultiKrum(
                **common, num_malicious_nodes=s.num_malicious_nodes, num_nodes_to_select=s.num_nodes_to_select
            )
        case "bulyan":
            return fl.Bulyan(**common, num_malicious_nodes=s.num_malicious_nodes)
    raise ValueError(f"unknown federated.strategy.name {s.name!r}")
