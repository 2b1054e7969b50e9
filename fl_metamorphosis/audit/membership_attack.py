"""Membership inference on released features: was this image in the training set?

The attack is the loss-threshold test (Yeom et al., CSF 2018): a model fits its training samples
better than unseen ones, so a low task loss on a sample's released features says "member". The score is
minus the summed task loss of the server's heads on a fresh release of the sample. Reported: the ROC AUC
of that score over members (samples the model trained on) against the same number of non-members
(held-out images it never saw); 0.5 is chance. DP-SGD bounds how far above 0.5 it can go.
"""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score
from torch import nn


@torch.no_grad()
def task_losses(heads: nn.ModuleList, released: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``[N]``: the sum over tasks of each head's loss on its own task's released feature."""
    heads.eval()
    return sum(head.per_sample_loss(head(released[:, t]), labels[:, t]) for t, head in enumerate(heads))


def membership_auc(
    heads: nn.ModuleList,
    member_released: torch.Tensor,
    member_labels: torch.Tensor,
    outsider_released: torch.Tensor,
    outsider_labels: torch.Tensor,
) -> dict[str, float | int | str]:
    """AUC of the loss attack on equal numbers of members and outsiders."""
    n = min(len(member_released), len(outsider_released))
    if n < 2:
        raise ValueError("membership attack needs at least 2 members and 2 outsiders")
    scores = torch.cat(
        [
            -task_losses(heads, member_released[:n], member_labels[:n]),
            -task_losses(heads, outsider_released[:n], outsider_labels[:n]),
        ]
    )
    truth = torch.cat([torch.ones(n), torch.zeros(n)])
    return {
        "auc": float(roc_auc_score(truth.numpy(), scores.numpy())),
        "chance": 0.5,
        "members": n,
        "non_members": n,
        "attack": "loss threshold on the heads' summed task loss (Yeom et al. 2018)",
    }
