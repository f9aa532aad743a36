"""Why each kind of synthetic look-alike is left unlabelled (the CMB definition it fails).

A CMB, as raters mark it (STARS / STRIVE): a small (2–10 mm), round or ovoid, blooming
hypointensity on T2*/SWI, surrounded by brain parenchyma, not explained by vessels, mineral,
or a larger lesion. Each record of a subject's ``meta["mimics"]`` names its ``type``; the
loaded case's records carry the reason below as ``"unlabelled_because"`` (added on load from
this table, so generated cache files, frozen for versions 1.1 and 2.0, are unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

UNLABELLED_BECAUSE: dict[str, str] = {
    "vein": "a vessel: dark because of deoxyhaemoglobin, a dot only where it crosses the slice "
    "and a line on the neighbouring slices",
    "calcification": "mineral, not blood: diamagnetic (the opposite phase shift to haemosiderin)",
    "iron_focus": "physiological iron deposition (basal ganglia mineralisation), not a bleed",
    "air_bone": "a field inhomogeneity at an air-bone interface, not a lesion",
    "flow_void": "signal lost to arterial flow in a vessel near the skull base, not a lesion",
    "siderosis": "superficial siderosis: a band of haemosiderin along the cortical surface, "
    "rated as its own marker, not as CMBs",
    "macro_haemorrhage": "a haemorrhage larger than 10 mm: beyond the CMB definition's size",
    "cavernoma": "a cavernous malformation (a cluster of cores with a mixed rim), not a CMB",
    "lacune": "a fluid-filled cavity of an old small infarct: CSF-like signal, no haemosiderin",
    "wmh": "a white-matter hyperintensity: bright on T2-weighted images, not a hypointensity",
}


def with_reasons(records: Iterable[Any]) -> list[Any]:
    """Copies of mimic ``records`` (dicts with a ``"type"``) with ``"unlabelled_because"``
    added from :data:`UNLABELLED_BECAUSE`; a record of an unknown type, or one that is not a
    dict, is kept as it is."""
    out = []
    for rec in records:
        if isinstance(rec, dict) and rec.get("type") in UNLABELLED_BECAUSE:
            rec = {**rec, "unlabelled_because": UNLABELLED_BECAUSE[rec["type"]]}
        out.append(rec)
    return out
