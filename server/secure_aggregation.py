"""The round's training through Flower's SecAgg+: the server learns the sum of the updates, not each one.

With ``federated.secure_aggregation`` on, the run's train exchange (``round_attachments.TrainExchange``)
is ``SecureExchange``, chosen once at start: the round calls it where a plain run calls ``train`` and
``check_replies`` (``PlainExchange``).
Flower 1.42 runs SecAgg+ only as a legacy workflow (``SecAggPlusWorkflow`` over a ``LegacyContext``
and a legacy ``Strategy``), so this module hands it the round: ``sample`` chose the devices and built
their requests as always; a one-round legacy strategy passes them to the workflow (``configure_fit``)
and takes back what the workflow gives (``aggregate_fit``): the unmasked weighted mean of the devices'
updates and each device's clear report. The mean, added to the weights sent, becomes the one reply the
configured Message-API strategy aggregates, so FedAvgM's momentum or FedAdam's moments act on it as on
the plain mean. Strategies that read each update are refused by the config.

What the server can no longer do per device, and what it does instead:

* validate an update (NaN, shape): the device checks its own and sends zeros with weight 0 when it is
  not finite (``flower/secagg_records.py``); the server checks the mean.
* drop an update its own ledger puts past the budget: the update is already in the sum, so such a
  round is not aggregated at all. A device's own budget check, before it trains, is unaffected.
* drop a malformed report: same, the round is not aggregated.

What a device dropping out costs: SecAgg+ unmasks the sum without it as long as enough of its
neighbours answer (``federated.secagg.reconstruction_threshold``); otherwise the workflow halts and the
round is not aggregated.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fl_metamorphosis.config import SecAggConfig
from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.flower import secagg_records

from .replies import SortedReplies, book_report

if TYPE_CHECKING:
    from .round_loop import Federation

log = logging.getLogger(__name__)


class _Handover(LegacyStrategy):
    """The legacy strategy the workflow asks: the round's own requests out, the workflow's results in."""

    def __init__(self, grid: Grid, requests: dict[int, FitIns]) -> None:
        self.grid = grid
        self.requests = requests
        self.results: list[tuple[ClientProxy, FitRes]] | None = None  # None: the workflow halted
        self.failures: list[Any] = []

    def configure_fit(self, server_round, parameters, client_manager):
        return [(GridClientProxy(node, self.grid, 0), ins) for node, ins in self.requests.items()]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        return (results[0][1].parameters if results else None), {}  # every result holds the unmasked mean

    def initialize_parameters(self, client_manager) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def workflow(secagg: SecAggConfig) -> SecAggPlusWorkflow:
    return SecAggPlusWorkflow(
        num_shares=float(secagg.num_shares),  # floats: shares of the round's devices (Flower's convention)
        reconstruction_threshold=float(secagg.reconstruction_threshold),
        max_weight=secagg.max_weight,
        clipping_range=secagg.clipping_range,
        quantization_range=secagg.quantization_range,
        timeout=secagg.timeout_s,
    )


class SecureExchange:
    """The train exchange under SecAgg+ (``round_attachments.TrainExchange``): ``secure_train``."""

    def exchange(self, grid: Grid, fed: Federation, messages: list[Message], rnd: int) -> SortedReplies:
        return secure_train(grid, fed, messages, rnd)


def secure_train(grid: Grid, fed: Federation, messages: list[Message], rnd: int) -> SortedReplies:
    """Run the round's training under SecAgg+; ``valid`` holds one reply: the weights plus the mean update."""
    if not messages:
        return SortedReplies()
    requests = {m.metadata.dst_node_id: secagg_records.fit_ins(m.content) for m in messages}
    handover = _Handover(grid, requests)
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=fed.cfg.federated.rounds),
        strategy=handover,
    )
    # the workflow reads these two records; the weights it would read are already in the requests
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    workflow(fed.cfg.federated.secagg)(grid, context)

    out = SortedReplies()
    if handover.results is None:
        log.warning(f"  round {rnd}: secure aggregation halted (too few devices answered): not aggregated")
        out.rejected.update({node: "secure aggregation halted" for node in requests})
        return out
    usable = _record_reports(fed, handover.results, out, rnd)
    answered = {proxy.node_id for proxy, _ in handover.results}
    for node in sorted(set(requests) - answered):
        out.rejected[node] = "dropped out of secure aggregation"
    for node, reason in out.rejected.items():
        log.warning(f"  round {rnd}: rejected reply of node {node}: {reason}")
    for failure in handover.failures:
        log.warning(f"  round {rnd}: secure aggregation: {failure}")
    if not usable:
        log.warning(f"  round {rnd}: the secure sum holds an update the server cannot use: not aggregated")
    if usable and out.contributors:
        mean = parameters_to_ndarrays(handover.results[0][1].parameters)
        weights = _add_mean_update(messages[0].content[proto.ARRAYS], mean, rnd)
        if weights is not None:
            total = sum(report.num_examples for report, _ in out.reports if report.declined is None)
            content = RecordDict({proto.ARRAYS: weights, proto.METRICS: MetricRecord({"num-examples": total})})
            out.valid.append(Message(content=content, dst_node_id=0, message_type=proto.TRAIN))
    return out


def _record_reports(fed: Federation, results: list[tuple[ClientProxy, FitRes]], out: SortedReplies, rnd: int) -> bool:
    """Every clear report to the ledger; False when the sum holds an update the server must not use."""
    usable = True
    secagg = fed.cfg.federated.secagg
    for proxy, fitres in results:
        node = proxy.node_id
        try:
            report, clipped = secagg_records.train_report(fitres)
        except (proto.MessageError, KeyError, TypeError, ValueError) as err:
            out.rejected[node] = str(err)
            usable = False
            continue
        wrong_device = fed.binding.claim(node, report.device)
        if wrong_device is not None:  # booked to no one: the ledger is the claimed device's
            out.rejected[node] = wrong_device
            usable = False
            continue
        if report.num_examples > fed.cfg.federated.max_device_examples:  # its weight is inside the sum
            out.rejected[node] = (
                f"num-examples {report.num_examples} above federated.max_device_examples="
                f"{fed.cfg.federated.max_device_examples}"
            )
            usable = False
            continue
        out.reports.append((report, None))
        past_budget = book_report(fed.ledger, report, fed.cfg, rnd, aggregatable=report.declined is None)
        if report.declined is not None:
            out.declined[report.device] = report.declined
            continue
        out.contributors.append(node)
        out.contributing_devices[node] = report.device
        if past_budget is not None:
            out.rejected[node] = past_budget
            usable = False
        if clipped:
            log.warning(
                f"  round {rnd}: device {report.device}: {clipped} update coordinates clipped to "
                f"+-{secagg.clipping_range}: raise federated.secagg.clipping_range"
            )
        if report.num_examples > secagg.max_weight:
            log.warning(
                f"  round {rnd}: device {report.device} has {report.num_examples} training pairs, more than "
                f"federated.secagg.max_weight={secagg.max_weight}: raise it"
            )
    return usable


def _add_mean_update(sent: ArrayRecord, mean: list[np.ndarray], rnd: int) -> ArrayRecord | None:
    names = list(sent.keys())
    reference = [sent[n].numpy() for n in names]
    if len(mean) != len(reference) or any(m.shape != r.shape for m, r in zip(mean, reference, strict=True)):
        log.warning(f"  round {rnd}: the secure sum does not match the model's arrays: not aggregated")
        return None
    if not all(np.isfinite(m).all() for m in mean):
        log.warning(f"  round {rnd}: the secure mean is not finite: not aggregated")
        return None
    return ArrayRecord({n: Array((r + m).astype(r.dtype)) for n, r, m in zip(names, reference, mean, strict=True)})
