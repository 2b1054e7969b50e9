"""ClientApp mod: the device owner's privacy policy, checked before any handler runs.

The config of every request is the server's, and the server is one of the parties the device protects
itself against (``fl_metamorphosis/privacy/device_policy.py``). This mod reads the request's config and
answers a request that asks for less protection than the policy with an error reply naming each field,
the value asked and the floor: nothing is trained, released or counted. The server reads the refusal by
its reason's prefix (``messages.POLICY_REFUSED``) and reports it per round.
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.environment import SIMULATION_ENV
from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.privacy.device_policy import POLICY_ENV, DevicePolicy

POLICY_FILE = "policy-file"  # node config: the owner's privacy policy (TOML)


def device_policy(context: Context) -> DevicePolicy:
    """The owner's floors: a policy file (node config ``policy-file``, or ``POLICY_ENV``); in a simulation
    without one, the operator's own run config; otherwise the project's defaults. Node config
    ``epsilon-budget`` and ``max-releases-per-pair`` may lower them further."""
    file = context.node_config.get(POLICY_FILE) or os.environ.get(POLICY_ENV)
    if file:
        policy = DevicePolicy.load(str(file))
    elif os.environ.get(SIMULATION_ENV) == "1" and context.run_config.get("config-path"):
        operator = Path(str(context.run_config["config-path"])).read_text()
        policy = DevicePolicy.from_config(ExperimentConfig.model_validate_json(operator))
    else:
        policy = DevicePolicy()
    own = context.node_config
    return policy.tightened(
        epsilon_budget=own.get("epsilon-budget"), max_releases_per_pair=own.get("max-releases-per-pair")
    )


def enforce_policy(msg: Message, context: Context, call_next) -> Message:
    """Flower mod: a request whose config asks for less protection than the device's policy gets an error
    reply naming each field, the value asked and the floor; the handler never runs."""
    if proto.CONFIG not in msg.content.config_records or proto.EXPERIMENT not in msg.content[proto.CONFIG]:
        return call_next(msg, context)
    refusals = device_policy(context).refusals(proto.experiment_from(msg.content[proto.CONFIG]))
    if not refusals:
        return call_next(msg, context)
    reason = proto.POLICY_REFUSED + "; ".join(str(r) for r in refusals)
    return Message(Error(int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION), reason), reply_to=msg)
