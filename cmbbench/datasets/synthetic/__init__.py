"""The embedded default dataset ``synthetic``: semi-synthetic CMBs on the MNI152 anatomy.

Importing this package registers the dataset (cheap: numpy/scipy/nibabel only; the
templates load on first generation). See ``docs/datasets-synthetic.md``.
"""

from __future__ import annotations

from cmbbench.datasets.synthetic.contrast import list_protocols
from cmbbench.datasets.synthetic.dataset import INFO, compute_splits, export_tree, synthetic
from cmbbench.datasets.synthetic.presets import DATASET_VERSION, GENERATOR_VERSION, PRESETS
from cmbbench.datasets.synthetic.subjects import SubjectSpec


def generate_subject(spec: SubjectSpec):
    """Generate one subject (see :func:`cmbbench.datasets.synthetic.generator.generate_subject`)."""
    from cmbbench.datasets.synthetic.generator import generate_subject as _generate

    return _generate(spec)


__all__ = [
    "DATASET_VERSION",
    "GENERATOR_VERSION",
    "INFO",
    "PRESETS",
    "SubjectSpec",
    "compute_splits",
    "export_tree",
    "generate_subject",
    "list_protocols",
    "synthetic",
]
