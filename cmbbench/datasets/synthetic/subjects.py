"""Who a synthetic subject is: its spec (cache fingerprint), id, protocol and CMB count.

Light on purpose (no scipy): the dataset registration and the splits only need these draws,
not the generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cmbbench.datasets.synthetic.contrast import get_protocol
from cmbbench.datasets.synthetic.lesions import LesionModel
from cmbbench.datasets.synthetic.presets import GENERATOR_VERSION, get_preset
from cmbbench.datasets.synthetic.sampling import component_rng, sample_count


@dataclass(frozen=True)
class SubjectSpec:
    """Everything that determines one generated subject (and its cache fingerprint)."""

    subject_id: str
    seed: int
    protocol: str
    preset: str
    lesion_model: LesionModel = "dipole"
    version: str = GENERATOR_VERSION
    #: generator elements switched off (an ablation; :data:`~.presets.ELEMENTS`), sorted
    without: tuple[str, ...] = ()

    @property
    def case_id(self) -> str:
        return self.subject_id

    def has(self, element: str) -> bool:
        """Whether this subject is generated with ``element`` (generator 2.x, not ablated)."""
        return self.version != "1.0" and element not in self.without

    def fingerprint(self) -> dict:
        p = get_preset(self.preset, self.version)
        fields = asdict(self)
        if not self.without:  # a full subject's fingerprint is the one generator 1.0 wrote
            fields.pop("without")
        else:
            fields["without"] = list(self.without)
        return {
            **fields,
            "protocol_params": get_protocol(self.protocol).as_dict(),
            "box_mm": p.box_mm,
            "count_cap": p.count_cap,
            "margin_mm": p.margin_mm,
        }


def subject_ids(n: int) -> list[str]:
    """``sub-0001`` … ``sub-{n:04d}``."""
    return [f"sub-{i:04d}" for i in range(1, int(n) + 1)]


def subject_protocol(
    seed: int, subject_id: str, preset: str, version: str = GENERATOR_VERSION
) -> str:
    """The protocol a subject draws from the preset's mix."""
    mix = get_preset(preset, version).protocols
    names = sorted(mix)
    w = np.asarray([mix[k] for k in names], dtype=np.float64)
    rng = component_rng(version, seed, subject_id, "protocol")
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def subject_count(seed: int, subject_id: str, preset: str, version: str = GENERATOR_VERSION) -> int:
    """The planned CMB count (before placement/ignore) of a subject."""
    cap = get_preset(preset, version).count_cap
    return sample_count(component_rng(version, seed, subject_id, "count"), cap)
