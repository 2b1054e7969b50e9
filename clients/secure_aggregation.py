"""ClientApp mod: Flower's SecAgg+ around the train handler, for the requests that ask for it.

A request of the SecAgg+ protocol (it carries ``secaggplus_configs``) goes to Flower's
``secaggplus_mod``, which keeps the protocol's keys and shares in the run's context state and runs its
four stages; in the one that collects masked vectors it calls the train handler. That handler speaks
this project's protocol, so the call is translated both ways (``flower/secagg_records.py``): the legacy
fit request becomes a train request, and the train reply a legacy fit reply whose parameters are the
update. Requests without ``secaggplus_configs`` pass through untouched.

The replay mod sits inside this one and sees the translated request, which leaves out the protocol's
per-session keys: a resumed server that asks for the same round again, securely or not, gets the same
update back, so it is counted once.

A device owner who wants no server to see their device's update alone sets node config
``secure-aggregation=required``: this device then refuses plain train requests.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.flower import secagg_records

REQUIRED = "secure-aggregation"  # node config; "required": plain train requests are refused


class SecureAggregationRequired(RuntimeError):
    """A plain train request reached a device that requires secure aggregation."""


def secure_aggregation(msg: Message, context: Context, call_next) -> Message:
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, lambda m, c: _in_legacy_layout(m, c, call_next))
    if msg.metadata.message_type == proto.TRAIN and str(context.node_config.get(REQUIRED, "")) == "required":
        raise SecureAggregationRequired(
            f"this device's node config has {REQUIRED}='required' and the server sent a plain train request: "
            "set federated.secure_aggregation=true on the server"
        )
    return call_next(msg, context)


def _in_legacy_layout(msg: Message, context: Context, call_next) -> Message:
    """The collect stage's call: legacy fit request in, train handler, legacy fit reply out."""
    request = secagg_records.train_request(msg.content)
    msg.content = request
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    secagg = proto.experiment_from(request[proto.CONFIG]).federated.secagg
    return Message(content=secagg_records.fit_res(reply.content, request, secagg), reply_to=msg)
