"""A third-party plug-in as a user would write it: registers a tiny network and a tiny dataset.

Used by the engine tests through ``--plugin <this file>`` and ``load_plugin``. The dataset
``engine-cubes`` holds noisy bright volumes with dark 3×3×3 cubes (27 voxels, labelled 1, 2,
...): a CMB-like target that a two-layer network learns in a few dozen steps.
"""

from __future__ import annotations

import numpy as np

from cmbbench import register_model
from cmbbench.cases import Case, CaseData
from cmbbench.datasets.registry import Dataset, DatasetInfo, register_dataset

CUBES = DatasetInfo(
    name="engine-cubes",
    description="tiny volumes with dark 3x3x3 cubes (engine tests)",
    version="test-1",
    default_rule="overlap",
    label_kind="instance",
    needs_root=False,
)

SPLITS = {"train": (0, 1, 2, 3), "val": (10, 11), "test": (20, 21, 22)}
EMPTY = {22}  # a test case without CMBs


def cube_case(idx: int, shape=(24, 24, 16)) -> Case:
    rng = np.random.default_rng(idx)
    img = (100.0 + 5.0 * rng.standard_normal(shape)).astype(np.float32)
    lab = np.zeros(shape, np.uint16)
    if idx not in EMPTY:
        placed = 0
        while placed < 2:
            c = rng.integers(4, np.asarray(shape) - 4)
            if lab[tuple(slice(int(v) - 3, int(v) + 4) for v in c)].any():
                continue
            placed += 1
            lab[tuple(slice(int(v) - 1, int(v) + 2) for v in c)] = placed
    img[lab > 0] = 20.0
    affine = np.array(
        [[0.0, -1.0, 0.0, 30.0], [1.0, 0.0, 0.0, -12.0], [0.0, 0.0, 2.0, 4.0], [0, 0, 0, 1]]
    )
    return Case(
        f"cube{idx:02d}",
        affine,
        shape,
        "instance",
        lambda: CaseData(img.copy(), lab.copy()),
        meta={"cohort": "cubes", "lesion_attrs": {}},
    )


@register_dataset(CUBES)
def engine_cubes(root=None, split=None, **options) -> Dataset:
    ids = SPLITS[split] if split else tuple(i for s in SPLITS.values() for i in s)
    return Dataset(CUBES, [cube_case(i) for i in ids], split=split, options=options)


@register_model("engine_tiny", description="two 3x3x3 convolutions (engine tests)", divisor=1)
def engine_tiny(width: int = 8):
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv3d(1, width, 3, padding=1),
                nn.BatchNorm3d(width),
                nn.ReLU(),
                nn.Conv3d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv3d(width, 2, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return TinyNet(), {"lr": 1e-2, "patch_size": (16, 16, 16)}


@register_model("engine_badshape", description="returns a downsampled output (engine tests)")
def engine_badshape():
    from torch import nn

    return nn.Conv3d(1, 2, 3, stride=2, padding=1)


class DarkSpotDetector:
    """A non-learned detector: voxels darker than a fraction of the image median.

    ``fit`` picks the fraction on the validation cases (the darkest setting that still has a
    prediction in every case with CMBs is not needed here: a fixed grid, best total TP − FP).
    """

    def __init__(self):
        self.fraction = 0.5

    def fit(self, train, val, config):
        best = None
        for f in (0.3, 0.5, 0.7):
            score = 0
            for case in val:
                pred = case.image < f * np.median(case.image)
                score += int((pred & (case.label > 0)).sum()) - int(
                    (pred & (case.label == 0)).sum()
                )
            if best is None or score > best[0]:
                best = (score, f)
        self.fraction = best[1]

    def config(self):
        return {"fraction": self.fraction}

    def predict(self, case):
        from cmbbench.models.detector import Prediction

        return Prediction(
            mask=(case.image < self.fraction * np.median(case.image)).astype(np.uint8)
        )


@register_model("engine_dark", description="dark-voxel detector (engine tests)", kind="detector")
def engine_dark():
    return DarkSpotDetector()
