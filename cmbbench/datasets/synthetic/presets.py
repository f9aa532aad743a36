"""Dataset presets (size, protocol mix, field of view) and the frozen generator version."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmbbench.errors import UnknownNameError

#: Frozen generator version: bump it whenever generated volumes would change.
GENERATOR_VERSION = "1.0"

#: Dataset version (presets and their frozen splits; run records and leaderboards carry it):
#: bump it whenever a preset's subjects or splits change. 1.1: the ``quick`` preset grew from
#: 48 to 96 subjects split 70/15/15 (its 28-subject train split held 44 CMBs, too few for a
#: network to learn from; 1.0 records stay valid for 1.0 tables). Volumes are unchanged (the
#: generator is still 1.0, the first 48 subjects are the same), so caches stay valid.
DATASET_VERSION = "1.1"


@dataclass(frozen=True)
class Preset:
    """A dataset preset.

    ``protocols``: protocol name -> sampling weight (each subject draws one).
    ``box_mm``: (xmin, xmax, ymin, ymax, zmin, zmax) MNI mm field of view, ``None`` = the
    whole brain's bounding box. ``count_cap``: most CMBs per subject. ``fractions``: the
    train/val/test shares of the frozen split.
    """

    name: str
    n: int
    protocols: dict[str, float]
    box_mm: tuple[float, float, float, float, float, float] | None = None
    count_cap: int = 60
    margin_mm: float = 4.0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    description: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        120,
        {
            "t2s2d_3t_1x1x3": 0.26,
            "t2s2d_3t_1x1x4": 0.16,
            "t2s2d_3t_045x045x4": 0.18,
            "t2s3d_15t_05x05x08": 0.08,
            "swi_3t_094x094x175": 0.24,
            "swi_3t_045x045x1": 0.08,
        },
        description="120 subjects, six protocols shaped like the public CMB cohorts",
    ),
    "quick": Preset(
        "quick",
        96,
        {"t2s2d_3t_1x1x3": 1.0},
        margin_mm=1.0,
        # 70/15/15 rather than 60/20/20: more CMBs to train on, and validation + test
        # inference over 29 scans (about 4.5 s each for the reference U-Net on two cores)
        # keeps a whole `cmbbench run --model unet3d` from an empty cache within 10 minutes
        fractions=(0.7, 0.15, 0.15),
        description=(
            "96 subjects, one cheap 2D T2* protocol (1×1×3 mm), cropped to the brain, split 70/15/15"
        ),
    ),
    "tiny": Preset(
        "tiny",
        8,
        {"t2s2d_3t_1x1x3": 1.0},
        box_mm=(-40.0, 40.0, -50.0, 30.0, -12.0, 30.0),
        count_cap=8,
        margin_mm=2.0,
        description="8 small subjects (a 80×80×42 mm slab, 1×1×3 mm) for tests",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset ``name`` (unknown names list the known ones)."""
    if name not in PRESETS:
        raise UnknownNameError("preset", name, list(PRESETS))
    return PRESETS[name]
