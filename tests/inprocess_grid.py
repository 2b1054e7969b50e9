"""A Grid that delivers messages to a ClientApp in this process: the round loop without a SuperLink.

For tests and benchmarks: every message reaches the device as its own copy (as over the wire), each
device has its own context and state folder, an exception in the ClientApp becomes an error reply (as
in Flower's runtime), and ``tamper`` may change or drop (return None) a reply. ``policy`` is the devices'
privacy policy (written to a file their node config names); None: the project's defaults, as on a real
device."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fl_metamorphosis.privacy.device_policy import DevicePolicy


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app,
        num_nodes: int,
        state_root: Path,
        tamper: Callable[[int, Message], Message | None] | None = None,
        policy: DevicePolicy | None = None,
    ):
        self.client_app = client_app
        # Messages built outside a Flower runtime read the run's identity from here.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.tamper = tamper
        policy_file = None
        if policy is not None:
            Path(state_root).mkdir(parents=True, exist_ok=True)
            policy_file = Path(state_root) / "policy.json"
            policy.save(policy_file)
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                # each device's own state folder (its privacy ledger), as a real device's node config gives it
                node_config={
                    "partition-id": i,
                    "num-partitions": num_nodes,
                    "state-dir": str(Path(state_root) / str(i)),
                    **({"policy-file": str(policy_file)} if policy_file else {}),
                },
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(range(101, 101 + num_nodes))
        }
        self.sent: list[Message] = []

    def set_run(self, run):  # pragma: no cover - unused
        pass

    @property
    def run(self):  # pragma: no cover - unused
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):  # pragma: no cover - send_and_receive is used
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            msg.metadata.__dict__["_message_id"] = (
                uuid.uuid4().hex
            )  # as the SuperLink would (InMemoryGrid does the same)
            msg.metadata.__dict__["_src_node_id"] = 1
            self.sent.append(msg)
            # a device gets its own copy, as over the wire (SecAgg+'s mod edits what it receives)
            try:
                reply = self.client_app(copy.deepcopy(msg), self.contexts[node])
            except Exception as err:  # noqa: BLE001 - as Flower's runtime does: the server gets an error reply
                error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(err).__name__}: {err}")
                reply = msg.create_error_reply(error)
            reply.metadata.__dict__["_src_node_id"] = node
            reply = self.tamper(node, reply) if self.tamper else reply
            if reply is not None:  # a tamper that returns None plays a device that never answered
                replies.append(reply)
        return replies
