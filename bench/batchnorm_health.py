"""Which batch norms of a checkpoint still see a signal: the variance that reaches each one, against its eps.

A batch norm divides by ``sqrt(running_var + eps)``. Where the variance of what reaches it has fallen far below
``eps`` (1e-5), the division no longer restores the scale: the layer passes on almost nothing but its bias, and the
layers behind it learn nothing from the image. Adam with an L2 ``weight_decay`` can do this to the convolutions in
front of batch norms: the loss does not depend on their scale, so the decay term, which Adam normalises to a full
step, shrinks them. This prints, per batch norm (per domain for GU2Net's per-domain norms), the median running
variance, and counts the layers below ``eps`` (``--ratio``: how far below counts).

    python bench/batchnorm_health.py runs/accuracy/gu2net_head/seed0/models/model.pt
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle")


def running_variances(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """The median running variance of every batch norm in a state dict, by the norm's name."""
    return {k[: -len(".running_var")]: float(v.float().median()) for k, v in state.items() if k.endswith(".running_var")}


def starved(variances: dict[str, float], eps: float = 1e-5, ratio: float = 1.0) -> list[str]:
    """The batch norms whose median running variance is below ``eps * ratio``."""
    return [name for name, v in variances.items() if v < eps * ratio]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="model.pt files (the bundle's checkpoints)")
    ap.add_argument("--eps", type=float, default=1e-5, help="the batch norms' eps (torch's default)")
    ap.add_argument("--ratio", type=float, default=1.0, help="count a layer when its variance is below eps * ratio")
    args = ap.parse_args()
    sys.path.insert(0, BUNDLE)
    from scripts.checkpoints import CheckpointError, read_checkpoint

    for path in args.checkpoints:
        try:
            state = read_checkpoint(path)["model"]
        except (CheckpointError, KeyError) as e:
            sys.exit(f"{path}: {e}")
        variances = running_variances(state)
        low = starved(variances, args.eps, args.ratio)
        print(f"{path}: {len(low)} of {len(variances)} batch norms below {args.eps * args.ratio:g} "
              f"(smallest {min(variances.values(), default=float('nan')):.1e})")  # fmt: skip
        for name, v in variances.items():
            print(f"  {name:48} {v:9.1e}{'  <' if name in low else ''}")


if __name__ == "__main__":
    main()
