"""The train message in the layout Flower's SecAgg+ needs: legacy ``fitins.*`` and ``fitres.*`` records.

Flower 1.42 has SecAgg+ only for its legacy API: the server's ``SecAggPlusWorkflow`` sends a ``FitIns``
and the device's ``secaggplus_mod`` masks the ``parameters`` of the ``FitRes`` its handler returns. The
round loop and the ClientApp speak the protocol of ``messages.py``; these functions translate at the
edge, so the train handler, the replay mod and the ledger are the same with or without SecAgg+.

* Legacy parameters are a list of unnamed arrays: the request names them (config ``array-names``) and
  the reply keeps that order.
* The device masks its *update* (trained minus received weights), not its weights. The server adds the
  unmasked weighted mean of the updates to the weights it sent, which is FedAvg's weighted mean of the
  weights. An update is small, so a narrow clipping range (``federated.secagg.clipping_range``) gives a
  fine quantisation step.
* What stays in clear: the reply's metrics, which are the privacy report of a plain train reply
  (epsilon, steps, noise multiplier, ...), and the weight (``num_examples``). Two metrics are added: the
  number of update coordinates that the encoding will clip (a function of the DP-SGD output, so
  post-processing), and a declining device's reason. A device that declines or whose update is not
  finite sends zeros with weight 0: it adds nothing to the sum, and the protocol still has its shares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from ..config import SecAggConfig
from .messages import ARRAYS, CONFIG, METRICS, MessageError, TrainReply, check_metrics

ARRAY_NAMES = "array-names"  # request config: the names of the legacy parameters, in order
CLIPPED = "secagg-clipped"  # reply metric: update coordinates the fixed-point encoding clips
DECLINED_REASON = "declined-reason"  # reply metric: why a device that declined did


def fit_ins(request: RecordDict) -> FitIns:
    """Server: a train request (``arrays`` and ``config``) as the legacy ``FitIns`` SecAgg+ sends."""
    arrays = request[ARRAYS]
    names = list(arrays.keys())
    config = {**dict(request[CONFIG]), ARRAY_NAMES: json.dumps(names)}
    return FitIns(ndarrays_to_parameters([arrays[n].numpy() for n in names]), config)


def train_request(content: RecordDict) -> RecordDict:
    """Device: a legacy fit request as the protocol's train request."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    config = dict(fitins.config)
    if ARRAY_NAMES not in config:
        raise MessageError(f"secure train request: missing config field {ARRAY_NAMES!r}")
    names = json.loads(str(config.pop(ARRAY_NAMES)))
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(names) != len(arrays):
        raise MessageError(f"secure train request: {len(arrays)} arrays, {ARRAY_NAMES!r} names {len(names)}")
    named = {n: Array(np.ascontiguousarray(a)) for n, a in zip(names, arrays, strict=True)}
    return RecordDict({ARRAYS: ArrayRecord(named), CONFIG: ConfigRecord(config)})  # type: ignore[arg-type]


def fit_res(reply: RecordDict, request: RecordDict, secagg: SecAggConfig) -> RecordDict:
    """Device: the protocol's train reply as a legacy ``FitRes`` whose parameters are the update."""
    report = TrainReply.from_record(reply)
    received = {k: v.numpy() for k, v in request[ARRAYS].items()}
    metrics: dict[str, Any] = dict(reply[METRICS])
    weight = report.num_examples
    updates = [np.zeros_like(w) for w in received.values()]
    if report.declined is None:
        updates = [np.asarray(report.weights[k]) - w for k, w in received.items()]  # type: ignore[index]
        if not all(np.isfinite(u).all() for u in updates):
            updates = [np.zeros_like(w) for w in received.values()]
            report.declined = "its update is not finite"
            metrics["declined"] = 1
    if report.declined is not None:
        weight = 0
        metrics[DECLINED_REASON] = report.declined
    # SecAgg+ scales an update by weight / max_weight, then clips it to [-clipping_range, clipping_range]
    scale = weight / secagg.max_weight
    metrics[CLIPPED] = int(sum((np.abs(u) * scale > secagg.clipping_range).sum() for u in updates))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(updates), weight, metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=False)


def train_report(fitres: FitRes) -> tuple[TrainReply, int]:
    """Server: the clear part of a secure train reply: the device's privacy report and its clipped count."""
    m: Mapping[str, Any] = fitres.metrics
    declined = bool(int(m.get("declined", 0)))
    expected = TrainReply.FIELDS | {CLIPPED} | ({DECLINED_REASON} if declined else set())
    check_metrics("secure train reply", m, expected)
    report = TrainReply.from_metrics(m, declined=str(m[DECLINED_REASON]) if declined else None, weights=None)
    if fitres.num_examples != (0 if declined else report.num_examples):
        raise MessageError(f"secure train reply: weight {fitres.num_examples}, num-examples says {report.num_examples}")
    return report, int(m[CLIPPED])


def mean_error_bound(secagg: SecAggConfig, weights: list[int]) -> float:
    """The most the unmasked mean update can differ from the exact weighted mean, per coordinate.

    Each device encodes update * (pairs / max_weight) on ``quantization_range`` levels over
    [-clipping_range, clipping_range]: at most half a level off. The mean divides the sum by the summed
    weight shares. Doubled for the rounding of the weight shares themselves (each to 1 / quantization_range)
    and float32 arithmetic."""
    level = 2 * secagg.clipping_range / secagg.quantization_range
    return 2 * len(weights) * (level / 2) / (sum(weights) / secagg.max_weight)
