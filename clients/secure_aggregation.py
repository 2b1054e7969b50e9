"""ClientApp mod: Flower's SecAgg+ around the train handler, for the requests that ask for it.

A request of the SecAgg+ protocol (it carries ``secaggplus_configs``) goes to Flower's
``secaggplus_mod``, which keeps the protocol's keys and shares in the run's context state and runs its
four stages; in the one that collects masked vectors it calls the train handler. That handler speaks
this project's protocol, so the call is translated both ways (``flower/secagg_records.py``): the legacy
fit request becomes a train request, and the train reply a legacy fit reply whose parameters are the
update. Requests without ``secaggplus_configs`` pass through untouched.

This mod runs in the light outer app (``clients/client_app.py``): the stages that only exchange keys and
shares import neither torch nor the project's protocol, which only the training stage needs.

The replay mod sits inside this one and sees the translated request, which leaves out the protocol's
per-session keys: a resumed server that asks for the same round again, securely or not, gets the same
update back, so it is counted once.

A device owner who wants no server to see their device's update alone sets node config
``secure-aggregation=required`` (or ``secure_aggregation = true`` in its privacy policy): this device
then refuses plain train requests. SecAgg+ hides an update
in the sum of the round's updates, so a server that samples two devices learns the other's update
minus its own; node config ``secure-aggregation-min-devices=K`` makes the device refuse a round of
fewer than K devices. It reads the count in the protocol's setup message and refuses in the stage that
collects masked vectors, before it trains: SecAgg+ then treats it as a device that dropped out, and the
others' round goes on (a device that fails in the setup stage makes Flower 1.42's workflow halt at
unmasking, since nobody holds shares of its keys).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

REQUIRED = "secure-aggregation"  # node config; "required": plain train requests are refused
MIN_DEVICES = "secure-aggregation-min-devices"  # node config: the fewest devices a secure round may have
_ROUND = "metamorphosis.secagg-round"  # context state: the devices in the secure round under way


class SecureAggregationRequired(RuntimeError):
    """A plain train request reached a device that requires secure aggregation."""


def secure_aggregation(msg: Message, context: Context, call_next) -> Message:
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        _check_round_size(msg, context)
        return secaggplus_mod(msg, context, lambda m, c: _in_legacy_layout(m, c, call_next))
    if msg.metadata.message_type == MessageType.TRAIN and _requires_secure_aggregation(context):
        raise SecureAggregationRequired(
            f"this device requires secure aggregation (node config {REQUIRED}='required' or its privacy policy) "
            "and the server sent a plain train request: "
            "set federated.secure_aggregation=true on the server"
        )
    return call_next(msg, context)


def _requires_secure_aggregation(context: Context) -> bool:
    from .policy import device_policy  # only for a plain train request, which imports the device app anyway

    return str(context.node_config.get(REQUIRED, "")) == "required" or device_policy(context).secure_aggregation


def _check_round_size(msg: Message, context: Context) -> None:
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    least = context.node_config.get(MIN_DEVICES)
    if least is None:
        return
    if configs.get(Key.STAGE) == Stage.SETUP:
        context.state.config_records[_ROUND] = ConfigRecord({"devices": int(configs[Key.SAMPLE_NUMBER])})
        return
    if configs.get(Key.STAGE) != Stage.COLLECT_MASKED_VECTORS:
        return
    devices = int(context.state.config_records[_ROUND]["devices"]) if _ROUND in context.state.config_records else 0
    if devices < int(least):
        raise SecureAggregationRequired(
            f"a secure round of {devices} devices, and this device's node config has {MIN_DEVICES}={int(least)}: "
            "the server must sample more devices a round (federated.min_train_devices, federated.fraction_train)"
        )


def _in_legacy_layout(msg: Message, context: Context, call_next) -> Message:
    """The collect stage's call: legacy fit request in, train handler, legacy fit reply out."""
    from fl_metamorphosis.flower import messages as proto  # the stage that trains: torch is needed from here
    from fl_metamorphosis.flower import secagg_records

    request = secagg_records.train_request(msg.content)
    msg.content = request
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    secagg = proto.experiment_from(request[proto.CONFIG]).federated.secagg
    return Message(content=secagg_records.fit_res(reply.content, request, secagg), reply_to=msg)
