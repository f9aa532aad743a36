"""Dataset presets (size, protocol mix, field of view), the frozen dataset and generator
versions, and the generator's physical elements (what version 2 adds; ablations turn them off)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmbbench.errors import UnknownNameError

#: Frozen generator versions: bump whenever generated volumes would change. ``1.0``: the
#: first generator (one template brain, <= 60 veins, no pathology or artefacts); ``2.0``:
#: varied anatomy, mimics at real density, pathology, artefacts and rater agreement
#: (:data:`ELEMENTS`). The current one is the default of every spec.
GENERATOR_VERSION = "2.0"
GENERATOR_VERSIONS = ("1.0", "2.0")

#: Dataset version (presets and their frozen splits; run records and leaderboards carry it):
#: bump it whenever a preset's subjects or splits change. 1.1: the ``quick`` preset grew from
#: 48 to 96 subjects split 70/15/15 (its 28-subject train split held 44 CMBs, too few for a
#: network to learn from; 1.0 records stay valid for 1.0 tables). Volumes are unchanged (the
#: generator is still 1.0, the first 48 subjects are the same), so caches stay valid.
#: 2.0: generator 2.0 and presets sized to rank (quick: 100 test / 30 validation scans).
DATASET_VERSION = "2.0"
#: every loadable dataset version -> the generator version that made its volumes
DATASET_VERSIONS: dict[str, str] = {"1.1": "1.0", "2.0": "2.0"}

#: What generator 2.0 adds over 1.0, each drawn from its own named random stream (so turning
#: one off, ``without=...``, changes nothing else): the ablation table of
#: ``docs/datasets-synthetic.md`` switches them off one at a time.
ELEMENTS: dict[str, str] = {
    "warp": "smooth non-linear anatomy warp (individual folding and shape)",
    "atrophy": "age-driven atrophy: larger ventricles and sulci",
    "wmh": "white-matter hyperintensities (periventricular caps, deep patches)",
    "lacunes": "lacunes: small CSF-filled cavities in deep grey and white matter",
    "veins": "veins at real density (radial medullary, cortical; hundreds on SWI)",
    "flow_voids": "arterial flow voids near the skull base",
    "calcification": "basal-ganglia mineralisation, choroid-plexus and pineal calcification",
    "siderosis": "cortical superficial siderosis (dark bands along the cortex)",
    "macro": "an occasional macro-haemorrhage or cavernoma",
    "motion": "motion ghosting and ringing in a fraction of scans",
    "noise_texture": "parallel-imaging noise: spatially varying and correlated",
    "raters": "rater agreement: faint CMBs marked by one of two simulated raters",
}


def check_without(without: tuple[str, ...] | list[str] | str | None) -> tuple[str, ...]:
    """``without`` (element names, or one comma-separated string) validated and sorted."""
    if without is None or without == "" or without == ():
        return ()
    names = [w.strip() for w in without.split(",")] if isinstance(without, str) else list(without)
    unknown = [n for n in names if n not in ELEMENTS]
    if unknown:
        raise UnknownNameError("generator element", unknown[0], list(ELEMENTS))
    return tuple(sorted(set(names)))


def generator_of(dataset_version: str) -> str:
    """The generator version of a dataset version (unknown ones list the known)."""
    if str(dataset_version) not in DATASET_VERSIONS:
        raise UnknownNameError(
            "synthetic dataset version", str(dataset_version), list(DATASET_VERSIONS)
        )
    return DATASET_VERSIONS[str(dataset_version)]


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


_ALL_PROTOCOLS = {
    "t2s2d_3t_1x1x3": 0.26,
    "t2s2d_3t_1x1x4": 0.16,
    "t2s2d_3t_045x045x4": 0.18,
    "t2s3d_15t_05x05x08": 0.08,
    "swi_3t_094x094x175": 0.24,
    "swi_3t_045x045x1": 0.08,
}

#: the presets of dataset version 1.1 (generator 1.0)
PRESETS_V1: dict[str, Preset] = {
    "default": Preset(
        "default",
        120,
        _ALL_PROTOCOLS,
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


#: the presets of dataset version 2.0 (generator 2.0): sized so that a paired ΔF1 of about
#: 0.07 (quick) or 0.03 (benchmark) is detectable (``cmbbench data info`` prints it)
PRESETS_V2: dict[str, Preset] = {
    "default": Preset(
        "default",
        240,
        _ALL_PROTOCOLS,
        description="240 subjects, six protocols shaped like the public CMB cohorts",
    ),
    "quick": Preset(
        "quick",
        232,
        {"t2s2d_3t_1x1x3": 1.0},
        margin_mm=1.0,
        # 102 / 30 / 100: a test split of >= 100 scans (>= 200 CMBs) to rank on, >= 30
        # validation scans for a stable post-processing choice, and enough training CMBs
        fractions=(0.44, 0.13, 0.43),
        description=(
            "232 subjects, one cheap 2D T2* protocol (1×1×3 mm), cropped to the brain, "
            "split 102/30/100"
        ),
    ),
    "benchmark": Preset(
        "benchmark",
        760,
        _ALL_PROTOCOLS,
        fractions=(0.5, 0.1, 0.4),
        description="760 subjects over all six protocols, a 304-scan test split (GPU tracks)",
    ),
    "tiny": PRESETS_V1["tiny"],  # the same slab for tests (generator 2.0 makes its subjects)
}

#: generator version -> its presets
PRESETS_BY_GENERATOR: dict[str, dict[str, Preset]] = {"1.0": PRESETS_V1, "2.0": PRESETS_V2}
#: the presets of the current version
PRESETS: dict[str, Preset] = PRESETS_V2


def get_preset(name: str, version: str = GENERATOR_VERSION) -> Preset:
    """The preset ``name`` of generator ``version`` (unknown names list the known ones)."""
    presets = PRESETS_BY_GENERATOR.get(str(version))
    if presets is None:
        raise UnknownNameError("generator version", str(version), list(PRESETS_BY_GENERATOR))
    if name not in presets:
        raise UnknownNameError("preset", name, list(presets))
    return presets[name]
