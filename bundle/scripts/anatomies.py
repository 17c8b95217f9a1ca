"""Anatomies as data: each anatomy's landmark names, network input size, spacing and SDR radii.

The ordered list of anatomies defines the network's domains (domain index = position in the list).
It comes from the datalist, never from code, and is saved with every checkpoint so that a
checkpoint is never loaded with another order (that would silently swap the domains' weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .landmark_rules import parse_spacing

__all__ = ["Anatomy", "AnatomySet", "DEFAULT_RADII_MM", "DEFAULT_RADII_PX"]

DEFAULT_RADII_MM = (2.0, 2.5, 3.0, 4.0)
DEFAULT_RADII_PX = (3.0, 6.0, 9.0)


@dataclass(frozen=True)
class Anatomy:
    """One anatomy (a network domain).

    Args:
        name: unique name, e.g. ``"head"``.
        landmarks: landmark names, in the order of the datalist's coordinates.
        size: network input size ``(W, H)``, each divisible by 16.
        spacing: default pixel spacing ``(sx, sy)`` in mm of the original images, or None (pixels).
        sdr_radii: radii of the success detection rate, in the anatomy's unit.
    """

    name: str
    landmarks: tuple[str, ...]
    size: tuple[int, int]
    spacing: tuple[float, float] | None = None
    sdr_radii: tuple[float, ...] = field(default=())

    @property
    def num_landmarks(self) -> int:
        return len(self.landmarks)

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any], source: str = "datalist") -> Anatomy:
        """Build from a datalist's ``anatomies`` entry, with errors that name the source and anatomy."""
        where = f"{source}: anatomy {name!r}"
        landmarks = spec.get("landmarks")
        if isinstance(landmarks, int):
            landmarks = [f"L{i + 1}" for i in range(landmarks)]
        if not isinstance(landmarks, Sequence) or isinstance(landmarks, str) or len(landmarks) == 0:
            raise ValueError(f"{where}: 'landmarks' must be a non-empty list of names or a count.")
        if len(set(landmarks)) != len(landmarks):
            raise ValueError(f"{where}: landmark names must be unique.")
        size = spec.get("size")
        if not (isinstance(size, Sequence) and len(size) == 2 and all(int(s) > 0 and int(s) % 16 == 0 for s in size)):
            raise ValueError(f"{where}: 'size' must be [W, H] with both divisible by 16, got {size!r}.")
        spacing = spec.get("spacing")
        if spacing is not None:
            spacing = parse_spacing(spacing, where)
        radii = spec.get("sdr_radii") or (DEFAULT_RADII_MM if spacing is not None else DEFAULT_RADII_PX)
        return cls(
            name=str(name),
            landmarks=tuple(str(n) for n in landmarks),
            size=(int(size[0]), int(size[1])),
            spacing=spacing,
            sdr_radii=tuple(float(r) for r in radii),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"landmarks": list(self.landmarks), "size": list(self.size)}
        if self.spacing is not None:
            out["spacing"] = list(self.spacing)
        out["sdr_radii"] = list(self.sdr_radii)
        return out


class AnatomySet:
    """The ordered anatomies of a network: ``anatomy name -> domain index``.

    It has ``state_dict``/``load_state_dict`` so MONAI's ``CheckpointSaver`` stores it with the weights;
    loading a checkpoint whose anatomies differ raises instead of silently using the wrong domains.
    """

    def __init__(self, anatomies: Sequence[Anatomy]) -> None:
        names = [a.name for a in anatomies]
        if not names:
            raise ValueError("AnatomySet: at least one anatomy is needed.")
        if len(set(names)) != len(names):
            raise ValueError(f"AnatomySet: duplicate anatomy names in {names}.")
        self.anatomies = list(anatomies)
        self.index = {a.name: i for i, a in enumerate(self.anatomies)}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Mapping[str, Any]], source: str = "datalist") -> AnatomySet:
        if not isinstance(spec, Mapping) or not spec:
            raise ValueError(f"{source}: 'anatomies' must be a non-empty mapping of name -> description.")
        return cls([Anatomy.from_dict(name, s, source) for name, s in spec.items()])

    def __len__(self) -> int:
        return len(self.anatomies)

    def __iter__(self):
        return iter(self.anatomies)

    def __getitem__(self, key: str | int) -> Anatomy:
        if isinstance(key, int):
            return self.anatomies[key]
        return self.anatomies[self.domain(key)]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.anatomies]

    @property
    def landmark_counts(self) -> list[int]:
        """The network's ``out_channels``: one landmark count per domain."""
        return [a.num_landmarks for a in self.anatomies]

    def domain(self, name: str, source: str = "") -> int:
        if name not in self.index:
            prefix = f"{source}: " if source else ""
            raise ValueError(f"{prefix}unknown anatomy {name!r}; known anatomies: {self.names}.")
        return self.index[name]

    def with_radii_of(self, other: AnatomySet) -> AnatomySet:
        """These anatomies, with the SDR radii ``other`` gives those it declares (the evaluated datalist's protocol)."""
        return AnatomySet([replace(a, sdr_radii=other[a.name].sdr_radii) if a.name in other.index else a for a in self])

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The datalist's ``anatomies`` section for these anatomies."""
        return {a.name: a.to_dict() for a in self.anatomies}

    def state_dict(self) -> dict[str, Any]:
        """Names in domain order plus full specs (plain lists, strings and numbers: ``weights_only``-safe)."""
        return {"names": self.names, "landmarks": [list(a.landmarks) for a in self.anatomies], "specs": self.to_dict()}

    @classmethod
    def from_checkpoint(cls, path: str) -> AnatomySet:
        """The anatomies a checkpoint was trained with (so inference needs no datalist)."""
        from .checkpoints import read_checkpoint

        ckpt = read_checkpoint(path)
        if "anatomies" not in ckpt or "specs" not in ckpt["anatomies"]:
            raise ValueError(f"checkpoint {path}: has no anatomies; it was not written by this bundle.")
        state = ckpt["anatomies"]
        specs = state["specs"]
        return cls([Anatomy.from_dict(n, specs[n], f"checkpoint {path}") for n in state["names"]])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check a checkpoint's anatomies against these; any difference is an error."""
        theirs = list(state.get("names", []))
        if theirs != self.names:
            raise ValueError(
                f"checkpoint anatomies {theirs} (domain order) differ from this configuration's {self.names}: "
                "the network's domains would be mixed up. Use the datalist the model was trained with."
            )
        their_landmarks = [list(x) for x in state.get("landmarks", [])]
        mine = [list(a.landmarks) for a in self.anatomies]
        if their_landmarks != mine:
            raise ValueError("checkpoint landmark names differ from this configuration's for the same anatomies.")
