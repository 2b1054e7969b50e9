"""A device's messages and context for the in-process ClientApp tests: what a ServerApp would send."""

from pathlib import Path

import torch
from conftest import TINY_OVERRIDES, operator_policy_file
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_metamorphosis.config import build_config
from fl_metamorphosis.data.partition import device_datasets
from fl_metamorphosis.flower.messages import config_record
from fl_metamorphosis.flower.model_state import joint_state
from fl_metamorphosis.model import build_heads
from fl_metamorphosis.training.local_round import build_generator

# the release gate is tested on its own (test_release_gate.py, test_lying_server.py): off here, so that what
# these tests count does not depend on what a probe reads from the tiny model
FED_TINY = [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "release_gate.enabled=false"]


def fed_cfg(*extra):
    """The tiny preset for one MetaMorphosis federation, release gate off, with ``extra`` overrides."""
    return build_config(None, [*FED_TINY, *extra])


def train_message(cfg, rnd=1):
    """A train request of round ``rnd`` to device 0 with fresh weights (seed 0), and the generator sent."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    data, _ = device_datasets(cfg.data, cfg.federated, 0, cfg.train.seed)
    torch.manual_seed(0)
    gen = build_generator(cfg, data)
    heads = build_heads(gen.feature_shape, [10, 10], cfg.model)
    content = RecordDict(
        {
            "arrays": ArrayRecord(joint_state(gen, heads)),
            "config": config_record(cfg, **{"server-round": rnd}),
        }
    )
    msg = Message(content=content, message_type="train", dst_node_id=101, group_id=str(rnd))
    msg.metadata.__dict__["_message_id"] = f"m{rnd}"
    return msg, gen


def device_context(state_dir, cfg=None):
    """A device whose privacy policy is the operator's config (as in a simulation; the defaults' refusals
    are tests/clients/test_lying_server.py's subject)."""
    policy = operator_policy_file(Path(state_dir).parent / f"{Path(state_dir).name}-owner", cfg or fed_cfg())
    node_config = {"partition-id": 0, "num-partitions": 3, "state-dir": str(state_dir), "policy-file": policy}
    return Context(run_id=1, node_id=101, node_config=node_config, state=RecordDict(), run_config={})
