"""Image contrast: the spoiled gradient-echo signal equation and the acquisition protocols.

Signal of a tissue with proton density ρ, T1, T2* (ms) for repetition time TR, echo time TE
(ms) and flip angle α::

    S = ρ · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE / T2*),   E1 = exp(−TR / T1)

Tissue values are the literature figures of ``docs/datasets-synthetic.md`` (PD GM 0.80,
WM 0.69, CSF 1.0; T2* at 3 T 66 / 53 / 300 ms, at 1.5 T 84 / 66 / 400 ms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from cmbbench.errors import UnknownNameError

Sequence = Literal["T2*-GRE 2D", "T2*-GRE 3D", "SWI"]
TISSUES = ("gm", "wm", "csf")

PROTON_DENSITY = {"gm": 0.80, "wm": 0.69, "csf": 1.0}
T2STAR_MS = {
    3.0: {"gm": 66.0, "wm": 53.0, "csf": 300.0},
    1.5: {"gm": 84.0, "wm": 66.0, "csf": 400.0},
}
T1_MS = {
    3.0: {"gm": 1550.0, "wm": 900.0, "csf": 4200.0},
    1.5: {"gm": 1200.0, "wm": 700.0, "csf": 4000.0},
}
#: white-matter hyperintensity (generator 2.x): more water, longer T1 and T2* than white
#: matter (mildly bright on long-TR T2*-GRE, near white matter on short-TR SWI)
WMH_PARAMS = {
    3.0: {"pd": 0.77, "t1": 1350.0, "t2s": 72.0},
    1.5: {"pd": 0.77, "t1": 1000.0, "t2s": 90.0},
}


@dataclass(frozen=True)
class Protocol:
    """An acquisition preset.

    ``voxel_mm``: target voxel size (x, y, z) in mm, z = slice direction = B0 direction.
    ``snr``: range of WM signal / noise σ. ``scale``: scanner intensity scale (WM ≈ scale).
    """

    name: str
    description: str
    sequence: Sequence
    field_strength_t: float
    tr_ms: float
    te_ms: float
    flip_deg: float
    voxel_mm: tuple[float, float, float]
    snr: tuple[float, float]
    scale: float
    vein_loss: tuple[float, float] = (0.3, 0.7)

    def as_dict(self) -> dict:
        return asdict(self)


_PROTOCOLS: tuple[Protocol, ...] = (
    Protocol(
        "t2s2d_3t_1x1x3",
        "VALDO-like 2D T2*-GRE at 3 T, 1×1×3 mm",
        "T2*-GRE 2D",
        3.0,
        1300.0,
        23.0,
        15.0,
        (1.0, 1.0, 3.0),
        (20.0, 40.0),
        300.0,
    ),
    Protocol(
        "t2s2d_3t_1x1x4",
        "VALDO-like 2D T2*-GRE at 3 T, 1×1×4 mm",
        "T2*-GRE 2D",
        3.0,
        1300.0,
        23.0,
        15.0,
        (1.0, 1.0, 4.0),
        (20.0, 40.0),
        300.0,
    ),
    Protocol(
        "t2s2d_3t_045x045x4",
        "VALDO-like 2D T2*-GRE at 3 T, 0.45×0.45×4 mm",
        "T2*-GRE 2D",
        3.0,
        1300.0,
        23.0,
        15.0,
        (0.45, 0.45, 4.0),
        (15.0, 30.0),
        2.0,
    ),
    Protocol(
        "t2s3d_15t_05x05x08",
        "3D T2*-GRE at 1.5 T, 0.5×0.5×0.8 mm",
        "T2*-GRE 3D",
        1.5,
        45.0,
        31.0,
        13.0,
        (0.5, 0.5, 0.8),
        (15.0, 30.0),
        30000.0,
    ),
    Protocol(
        "swi_3t_094x094x175",
        "SWI magnitude at 3 T, 0.94×0.94×1.75 mm",
        "SWI",
        3.0,
        27.0,
        20.0,
        15.0,
        (0.94, 0.94, 1.75),
        (18.0, 35.0),
        500.0,
        (0.5, 0.9),
    ),
    Protocol(
        "swi_3t_045x045x1",
        "SWI magnitude at 3 T, 0.45×0.45×1 mm",
        "SWI",
        3.0,
        27.0,
        20.0,
        15.0,
        (0.45, 0.45, 1.0),
        (15.0, 30.0),
        500.0,
        (0.5, 0.9),
    ),
    Protocol(
        "t2s3d_3t_1mm",
        "3D T2*-GRE at 3 T, 1 mm isotropic (reference resolution)",
        "T2*-GRE 3D",
        3.0,
        40.0,
        20.0,
        15.0,
        (1.0, 1.0, 1.0),
        (25.0, 40.0),
        1000.0,
    ),
)
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in _PROTOCOLS}


def list_protocols() -> list[str]:
    """Names of the acquisition protocols."""
    return [p.name for p in _PROTOCOLS]


def get_protocol(name: str) -> Protocol:
    """The protocol ``name`` (unknown names list the known ones)."""
    if name not in PROTOCOLS:
        raise UnknownNameError("protocol", name, list(PROTOCOLS))
    return PROTOCOLS[name]


def _nearest_field(b0: float) -> float:
    return 1.5 if b0 < 2.25 else 3.0


def tissue_params(b0: float) -> dict[str, dict[str, float]]:
    """PD, T1 (ms) and T2* (ms) per tissue at field strength ``b0`` (T)."""
    f = _nearest_field(b0)
    return {
        t: {"pd": PROTON_DENSITY[t], "t1": T1_MS[f][t], "t2s": T2STAR_MS[f][t]} for t in TISSUES
    }


def spgr_signal(pd, t1_ms, t2s_ms, tr_ms: float, te_ms: float, flip_deg: float):
    """Spoiled gradient-echo steady-state signal (arbitrary units); arrays broadcast."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms / np.asarray(t1_ms))
    return (
        pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-te_ms / np.asarray(t2s_ms))
    )


def tissue_image(
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    iron: np.ndarray,
    protocol: Protocol,
    jitter: dict[str, dict[str, float]] | None = None,
    wmh: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Partial-volume signal image (float32, same shape as the maps) and the WM signal.

    ``iron`` is the R2* multiplier at 3 T (1 outside iron-rich nuclei); its excess scales with
    B0. ``jitter[tissue][param]`` multiplies the tissue parameters (per-subject variation).
    Iron only shortens T2* of GM and WM, so the signal is computed per tissue with its own
    R2*: S = Σ_t frac_t · ρ_t · f(T1_t) · exp(−TE · R2*_t · iron_B0). ``wmh``: the part of
    ``wm`` that is a white-matter hyperintensity (:data:`WMH_PARAMS`, the WM jitter applied).
    """
    params = tissue_params(protocol.field_strength_t)
    iron_b0 = 1.0 + (iron - 1.0) * np.float32(protocol.field_strength_t / 3.0)
    out = np.zeros(gm.shape, dtype=np.float32)
    s_wm = 0.0
    tissues = [("gm", gm), ("wm", wm if wmh is None else wm - wmh), ("csf", csf)]
    if wmh is not None:
        tissues.append(("wmh", wmh))
    for t, frac in tissues:
        p = (
            dict(params[t])
            if t != "wmh"
            else dict(WMH_PARAMS[_nearest_field(protocol.field_strength_t)])
        )
        jt = "wm" if t == "wmh" else t
        for k, v in (jitter or {}).get(jt, {}).items():
            p[k] *= v
        base = float(spgr_signal(p["pd"], p["t1"], 1e12, protocol.tr_ms, 0.0, protocol.flip_deg))
        r2s = protocol.te_ms / p["t2s"]
        if t == "wm":
            s_wm = base * float(np.exp(-r2s))
        if t == "csf":
            out += np.float32(base * np.exp(-r2s)) * frac
        else:
            out += np.float32(base) * frac * np.exp(np.float32(-r2s) * iron_b0)
    return out, s_wm
