"""Turn a public data set, as its owners distribute it, into the project's datalist (run from ``bundle/``)::

    python -m scripts.prepare isbi2015 --raw /data/ISBI2015 --out /data/prepared --protocol challenge
    python -m scripts.prepare hand --raw /data/hand --out /data/prepared

Each run adds one anatomy to ``OUT/datalist.json``, or replaces it, and keeps the others: running it once per
data set with the same ``--out`` builds a universal datalist. Everything is checked before anything is
written; the datalist is then replaced atomically. Images stay where they are (the datalist points at them).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .datasets.common import PreparedAnatomy, PrepareError, write_datalist
from .datasets.generic import prepare_generic
from .datasets.hand_atlas import prepare_hand
from .datasets.isbi2015 import LABELS, PROTOCOLS, prepare_isbi2015
from .datasets.shenzhen import prepare_shenzhen

__all__ = ["main", "build_parser"]


def _run(reader: Callable[..., PreparedAnatomy], args: argparse.Namespace) -> PreparedAnatomy:
    """Call a reader with the parsed options its signature names (option ``--val-fraction`` -> ``val_fraction``)."""
    names = inspect.signature(reader).parameters
    return reader(**{k: v for k, v in vars(args).items() if k in names})


def _add_fractions(parser: argparse.ArgumentParser, test: float) -> None:
    """Options of a data set without an official split: a seeded random draw (``--seed``)."""
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the images for validation (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=test, help=f"share of the images for test (default {test:.3g})")


def _add_common(parser: argparse.ArgumentParser, anatomy: str | None, size: Sequence[int], raw: str = "the data set's folder, as distributed") -> None:
    parser.add_argument("--raw", required=True, help=raw)
    parser.add_argument("--out", required=True, help="folder of the datalist.json to create or add to")
    parser.add_argument("--size", nargs=2, type=int, default=list(size), metavar=("W", "H"),
                        help=f"network input size of the anatomy, each divisible by 16 (default {size[0]} {size[1]})")  # fmt: skip
    parser.add_argument("--anatomy", default=anatomy, required=anatomy is None,
                        help="the anatomy's name in the datalist" + (f" (default {anatomy})" if anatomy else ""))  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split draws (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.prepare", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="source", required=True, metavar="source")

    p = sub.add_parser("isbi2015", help="head: ISBI 2015 cephalometric challenge (official or CSV layout)")
    _add_common(p, "head", (416, 512))
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper: test = Test1 + Test2; challenge: also the test1 and test2 splits")  # fmt: skip
    p.add_argument("--label", choices=LABELS, default="mean", help="mean of the two doctors (default), or one")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of training images for validation")
    p.set_defaults(reader=prepare_isbi2015)

    p = sub.add_parser("hand", help="hand: Digital Hand Atlas images + Payer et al.'s all.csv (37 landmarks)")
    _add_common(p, "hand", (352, 512))
    p.add_argument("--labels", help="Payer et al.'s all.csv (default RAW/all.csv)")
    _add_fractions(p, test=1 / 3)
    p.set_defaults(reader=prepare_hand)

    p = sub.add_parser("shenzhen", help="chest: Shenzhen CHNCXR_*_0.png + the 6-landmark label files")
    _add_common(p, "chest", (512, 512))
    p.add_argument("--labels", required=True, help="folder of the CHNCXR_NNNN_0.txt landmark files")
    _add_fractions(p, test=75 / 279)
    p.set_defaults(reader=prepare_shenzhen)

    p = sub.add_parser("generic", help="any anatomy (e.g. pelvis): a hand-written CSV or JSON landmark file (docs/data.md)")
    _add_common(p, None, (512, 512), raw="the landmark file (.csv or .json); image paths are relative to its folder")
    p.add_argument("--spacing", nargs=2, type=float, metavar=("SX", "SY"), help="mm per pixel of images without their own")
    p.add_argument("--sdr-radii", nargs="+", type=float, metavar="R", help="SDR radii in the anatomy's unit")
    _add_fractions(p, test=0.2)
    p.set_defaults(reader=prepare_generic)
    return parser


def _summary(prepared: PreparedAnatomy, path: str) -> str:
    lines = [f"{path}: anatomy {prepared.name!r} ({len(prepared.spec['landmarks'])} landmarks, size {prepared.spec['size']})"]
    lines += [f"  {key}: {value}" for key, value in prepared.report.items() if key not in ("counts", "source")]
    lines.append("  " + ", ".join(f"{s} {n}" for s, n in prepared.counts().items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run one preparation; return its report. Bad input exits with the message (file, line, problem)."""
    args = build_parser().parse_args(argv)
    try:
        prepared = _run(args.reader, args)
        path = write_datalist(args.out, prepared)
    except PrepareError as e:
        sys.exit(f"prepare {args.source}: {e}")
    print(_summary(prepared, path), flush=True)
    return prepared.report


if __name__ == "__main__":
    main()
