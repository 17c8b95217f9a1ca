"""Adding an anatomy to a trained GU2Net without touching the anatomies it already knows.

Everything anatomy-specific in GU2Net is a per-domain module (input conv, depth-wise convs, batch norms, heads,
the global network), held in ``ModuleList``s indexed by domain; only the point-wise convs are shared. A network
built for the old anatomies plus new ones therefore holds the trained network's every tensor under the same name,
and only the new domains' tensors are new. :func:`grow_network` fills the grown network from the checkpoint,
starts each new domain from an existing domain's layers where the shapes agree (the head and the global
network's heatmap conv depend on the landmark count and start fresh), and freezes everything but the new
domains. Old domains then compute exactly what they computed before: their weights and batch-norm statistics
are never updated, because frozen weights get no gradient and a domain's batch norms run only on its batches.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .anatomies import AnatomySet
from .checkpoints import read_checkpoint

__all__ = ["grow_network", "most_similar_anatomy", "trainable_parameters"]

# the per-domain ModuleLists of GU2Net, and so the path segment before a domain index in a state-dict key
_PER_DOMAIN = re.compile(r"(?:^|\.)(depthwise|norm|convs|dilated)\.(\d+)(?=\.)")


def _domain_of(key: str) -> int | None:
    """The domain index a state-dict key belongs to, or None for a shared tensor."""
    match = _PER_DOMAIN.search(key)
    return int(match.group(2)) if match else None


def _with_domain(key: str, domain: int) -> str:
    match = _PER_DOMAIN.search(key)
    assert match is not None
    return key[: match.start(2)] + str(domain) + key[match.end(2) :]


def most_similar_anatomy(base: AnatomySet, new_name: str, anatomies: AnatomySet) -> str:
    """The trained anatomy whose domain layers a new anatomy starts from: the closest network input aspect ratio
    (framing and scale of the image the filters see), then the closest landmark count."""
    new = anatomies[new_name]
    aspect = new.size[0] / new.size[1]
    return min(
        base,
        key=lambda a: (abs(a.size[0] / a.size[1] - aspect), abs(a.num_landmarks - new.num_landmarks)),
    ).name


def grow_network(
    network: nn.Module, base_ckpt: str, anatomies: AnatomySet, init_from: str | None = None
) -> nn.Module:
    """Load ``base_ckpt`` (a checkpoint of this bundle) into ``network``, which was built for ``anatomies``: the
    checkpoint's anatomies first, in their order, then the new ones. New domains start from ``init_from`` (an
    anatomy of the checkpoint; None: :func:`most_similar_anatomy`). Every tensor of the checkpoint is frozen.

    Returns ``network``, with ``requires_grad`` set on the new domains' parameters only.
    """
    ckpt = read_checkpoint(base_ckpt)
    base = AnatomySet.from_checkpoint(base_ckpt)
    n = len(base)
    if anatomies.names[:n] != base.names or [a.landmarks for a in anatomies][:n] != [a.landmarks for a in base]:
        raise ValueError(
            f"checkpoint {base_ckpt}: its anatomies {base.names} must come first, in that order and with the same "
            f"landmarks, in the grown network's anatomies {anatomies.names}."
        )
    if len(anatomies) == n:
        raise ValueError(f"checkpoint {base_ckpt}: the datalist adds no anatomy to {base.names}.")
    trained: dict[str, torch.Tensor] = ckpt["model"]
    state = network.state_dict()
    unknown = sorted(set(trained) - set(state))
    if unknown:
        raise ValueError(f"checkpoint {base_ckpt}: tensors {unknown[:3]} are not in the network; is it a GU2Net checkpoint?")
    for key in state:
        domain = _domain_of(key)
        if key in trained:
            state[key] = trained[key]
        elif domain is not None and domain >= n:
            source_name = init_from or most_similar_anatomy(base, anatomies[domain].name, anatomies)
            source = _with_domain(key, base.domain(source_name, f"checkpoint {base_ckpt}"))
            if source in trained and trained[source].shape == state[key].shape:
                state[key] = trained[source].clone()
        else:
            raise ValueError(f"checkpoint {base_ckpt}: has no {key}, which is not a new anatomy's tensor.")
    network.load_state_dict(state)
    for name, param in network.named_parameters():
        param.requires_grad_(name not in trained)
    return network


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (frozen ones are left out, so weight decay cannot move them)."""
    return [p for p in network.parameters() if p.requires_grad]
