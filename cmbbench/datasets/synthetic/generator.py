"""One synthetic subject, deterministic from (generator version, seed, subject id, component).

Pipeline: plan (count, locations, moments, mimics; :mod:`.sampling`, :mod:`.mimics`) ->
1 mm tissue signal from the template maps with iron, veins and air–bone drop-out
(:mod:`.contrast`) -> acquisition onto the target grid (:mod:`.acquisition`) -> CMBs,
calcifications and iron foci as dipoles rendered on the target grid with sub-voxel sampling
(:mod:`.lesions`) -> bias field, Rician noise, brain masking.

Labels: a CMB's voxels are those where its own attenuation leaves ≥ 30 % signal loss; a CMB
whose strongest voxel loses ≥ 25 % but none ≥ 30 % is labelled at that voxel (so every kept
CMB has ≥ 1 voxel); a CMB losing < 25 % everywhere is "ignore": listed in ``meta["cmbs"]``
with ``ignore=True``, absent from the label, its ≥ 10 % loss voxels set in the ignore mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cmbbench.datasets.synthetic.acquisition import (
    Grid,
    acquire,
    acquire_region,
    bias_field,
    box_corners,
    random_pose,
    rician_noise,
    target_grid,
)
from cmbbench.datasets.synthetic.anatomy import load_anatomy
from cmbbench.datasets.synthetic.contrast import Protocol, get_protocol, tissue_image
from cmbbench.datasets.synthetic.lesions import IGNORE_LOSS, KEEP_LOSS, LABEL_LOSS, render_dipole
from cmbbench.datasets.synthetic.mimics import (
    AIR_POCKETS,
    airbone_attenuation,
    dipole_record,
    plan_calcifications,
    plan_iron_foci,
    plan_veins,
    render_veins,
)
from cmbbench.datasets.synthetic.presets import get_preset
from cmbbench.datasets.synthetic.sampling import (
    P_LOBAR_ONLY,
    component_rng,
    place_cmbs,
    region_weights,
    sample_count,
)
from cmbbench.datasets.synthetic.subjects import (  # noqa: F401  (re-exported)
    SubjectSpec,
    subject_count,
    subject_ids,
    subject_protocol,
)

MIMIC_CODES = {"vein": 1, "calcification": 2, "iron_focus": 3, "air_bone": 4}


@dataclass
class Subject:
    """A generated subject on its target grid: arrays have shape ``grid.shape``."""

    spec: SubjectSpec
    grid: Grid
    image: np.ndarray  # float32
    label: np.ndarray  # uint16 instance map
    ignore: np.ndarray  # bool
    mimics: np.ndarray  # uint8, MIMIC_CODES
    meta: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def _brain_surface() -> np.ndarray:
    """MNI mm (N, 3) of the brain mask's surface voxels (for tight fields of view)."""
    anat = load_anatomy()
    surface = anat.brain & ~ndi.binary_erosion(anat.brain)
    return np.argwhere(surface) @ anat.affine[:3, :3].T + anat.affine[:3, 3]


def _grow(box: tuple[float, ...], margin: float) -> tuple[float, ...]:
    return tuple(v - margin if i % 2 == 0 else v + margin for i, v in enumerate(box))


def _sim_crop(grid: Grid, pose: np.ndarray, sim_affine: np.ndarray, shape, pad: int = 4):
    """Slices of the simulation grid that the target grid's footprint needs."""
    corners = (
        np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in grid.shape], indexing="ij"))
        .reshape(3, -1)
        .T
    )
    m = np.linalg.inv(sim_affine) @ pose @ grid.affine
    ijk = corners @ m[:3, :3].T + m[:3, 3]
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + pad + 1, shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    aff = sim_affine.copy()
    aff[:3, 3] = sim_affine[:3, :3] @ lo + sim_affine[:3, 3]
    return sl, aff


def _round(v, nd: int = 3) -> list[float]:
    return [round(float(x), nd) for x in v]


@dataclass(frozen=True)
class _Frame:
    """What every image of a subject shares: preset, protocol, anatomy, its named random
    streams (``rng(name)``), the placement box, the head pose and the target grid."""

    preset: Any
    protocol: Protocol
    anat: Any
    rng: Any
    place_box: Any
    pose: np.ndarray
    grid: Any
    to_world: np.ndarray


def _frame(spec: SubjectSpec) -> _Frame:
    """The subject's frame (draws only the ``"pose"`` stream)."""
    preset = get_preset(spec.preset)
    protocol: Protocol = get_protocol(spec.protocol)
    rng = lambda comp: component_rng(spec.version, spec.seed, spec.subject_id, comp)  # noqa: E731
    place_box = _grow(preset.box_mm, -5.0) if preset.box_mm is not None else None
    pose = random_pose(rng("pose"))
    fov = box_corners(preset.box_mm) if preset.box_mm is not None else _brain_surface()
    grid = target_grid(pose, fov, protocol.voxel_mm, preset.margin_mm)
    return _Frame(preset, protocol, load_anatomy(), rng, place_box, pose, grid, np.linalg.inv(pose))


def generate_subject(spec: SubjectSpec) -> Subject:
    """Generate one subject (deterministic: same spec -> byte-identical arrays).

    Plan (count, pattern, mimics, CMB sites) -> 1 mm tissue simulation with veins and air-bone
    drop-out, acquired on the protocol's grid -> mimic and CMB dipoles rendered on that grid
    (labels from the CMBs' signal loss) -> bias, scale and Rician noise inside the brain.
    Every random draw comes from a named per-subject stream (``component_rng``), so the
    stages can be read, and changed, one at a time.
    """
    f = _frame(spec)
    preset, protocol, anat, rng = f.preset, f.protocol, f.anat, f.rng
    place_box, pose, grid, to_world = f.place_box, f.pose, f.grid, f.to_world

    plan = _plan(rng, preset, protocol, place_box)
    image, brain, mimic_map, s_wm = _simulate(rng, anat, grid, pose, protocol, plan.veins)
    mimic_records = _render_mimics(plan, image, mimic_map, grid, to_world, protocol, spec)
    label, ignore, kept, ignored = _render_cmbs(
        plan.cmbs, image, brain, grid, to_world, protocol, spec
    )

    # ---- bias, scale, noise, mask -----------------------------------------------------------------
    snr, rms = _bias_scale_noise(rng("noise"), image, brain, protocol, s_wm)
    label[~brain] = 0

    cmb_records = [{k: r[k] for k in _CMB_RECORD_KEYS} for r in kept + ignored]
    meta = {
        "protocol": protocol.name,
        "cohort": protocol.name,
        "field_strength_t": protocol.field_strength_t,
        "sequence": protocol.sequence,
        "voxel_mm": list(protocol.voxel_mm),
        "te_ms": protocol.te_ms,
        "tr_ms": protocol.tr_ms,
        "flip_deg": protocol.flip_deg,
        "snr": round(snr, 3),
        "bias_rms": round(rms, 4),
        "lobar_only": plan.lobar_only,
        "planned_count": plan.count,
        "n_cmb": len(kept),
        "n_ignore": len(ignored),
        "cmbs": cmb_records,
        "mimics": mimic_records,
        "lesion_attrs": {r["id"]: {"region": r["region"]} for r in kept},
        "generator_version": spec.version,
        "seed": spec.seed,
        "subject_id": spec.subject_id,
        "preset": spec.preset,
        "lesion_model": spec.lesion_model,
        "pose": [_round(row, 6) for row in pose],
    }
    return Subject(spec, grid, image.astype(np.float32, copy=False), label, ignore, mimic_map, meta)


def _bias_scale_noise(
    nrng: Any, image: np.ndarray, brain: np.ndarray, protocol: Protocol, s_wm: float
) -> tuple[float, float]:
    """In place: a bias field, the protocol's scale (white matter at ``protocol.scale``,
    jittered) and Rician noise at the drawn SNR inside the brain, 0 outside (a masked
    acquisition). Returns ``(snr, bias rms)``; every draw from ``nrng``."""
    snr = float(nrng.uniform(*protocol.snr))
    rms = float(nrng.uniform(0.10, 0.20))
    scale = protocol.scale * float(nrng.uniform(0.8, 1.25)) / s_wm
    image *= bias_field(nrng, image.shape, rms)
    image *= np.float32(scale)
    image[brain] = rician_noise(nrng, image[brain], protocol.scale / snr)
    image[~brain] = 0.0
    return snr, rms


# the keys of a CMB's sidecar record, in order
_CMB_RECORD_KEYS = (
    "id",
    "centre_mm",
    "moment",
    "region",
    "diameter_mm",
    "ignore",
    "n_voxels",
    "core_diameter_mm",
    "max_loss",
)


@dataclass(frozen=True)
class _Plan:
    """What a subject holds, before any image exists (MNI mm)."""

    count: int
    lobar_only: bool
    veins: list
    calcs: list
    foci: list
    cmbs: list


def _plan(rng: Any, preset: Any, protocol: Protocol, place_box: Any) -> _Plan:
    """CMB count and pattern, veins, calcifications, iron foci, then CMB sites away from them."""
    count = sample_count(rng("count"), preset.count_cap)
    lobar_only = bool(rng("pattern").random() < P_LOBAR_ONLY)
    veins = plan_veins(rng("veins"), protocol.vein_loss, place_box)
    calcs = plan_calcifications(rng("calcifications"), place_box)
    foci = plan_iron_foci(rng("iron"), place_box)
    avoid = [v.points for v in veins] + [np.asarray([d.centre_mni]) for d in calcs + foci]
    avoid_pts = np.concatenate(avoid, axis=0) if avoid else None
    b0, te = protocol.field_strength_t, protocol.te_ms
    cmbs = place_cmbs(
        rng("cmbs"), count, region_weights(lobar_only), b0, te, place_box, avoid_pts, avoid_mm=3.0
    )
    return _Plan(count, lobar_only, veins, calcs, foci, cmbs)


def _subject_contrast(crng: np.random.Generator) -> tuple[dict, np.float32]:
    """The subject's tissue-parameter multipliers (``jitter[tissue][pd|t1|t2s]``, U(0.9, 1.1))
    and iron gain (U(0.8, 1.2)), from its ``"contrast"`` stream, in that order."""
    jitter = {
        t: {k: float(crng.uniform(0.9, 1.1)) for k in ("pd", "t1", "t2s")}
        for t in ("gm", "wm", "csf")
    }
    return jitter, np.float32(crng.uniform(0.8, 1.2))


def _simulate(
    rng: Any, anat: Any, grid: Any, pose: np.ndarray, protocol: Protocol, veins: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The 1 mm tissue image (contrast jitter, iron, veins, air-bone drop-out) acquired on the
    target grid: ``(image, brain mask, mimic code map, white-matter signal)``."""
    b0, te = protocol.field_strength_t, protocol.te_ms
    sl, sim_aff = _sim_crop(grid, pose, anat.affine, anat.shape)
    jitter, iron_gain = _subject_contrast(rng("contrast"))
    iron = 1.0 + (anat.iron[sl] - 1.0) * iron_gain
    sim, s_wm = tissue_image(anat.gm[sl], anat.wm[sl], anat.csf[sl], iron, protocol, jitter)
    vein_att = render_veins(veins)[sl]
    air = airbone_attenuation(b0, te, tuple(protocol.voxel_mm))[sl]
    sim *= vein_att
    sim *= air

    image = acquire(sim, sim_aff, pose, grid)
    brain = acquire(anat.brain[sl].astype(np.float32), sim_aff, pose, grid) >= 0.5
    mimic_map = np.zeros(grid.shape, dtype=np.uint8)
    for code, att_map, min_loss in (("air_bone", air, 0.3), ("vein", vein_att, 0.2)):
        out = acquire_region(att_map, sim_aff, pose, grid, att_map < 1.0 - min_loss / 2.0)
        if out is not None:
            s, sub = out
            mimic_map[s][((1.0 - sub) >= min_loss) & brain[s]] = MIMIC_CODES[code]
    return image, brain, mimic_map, s_wm


def _render_mimics(
    plan: _Plan,
    image: np.ndarray,
    mimic_map: np.ndarray,
    grid: Any,
    to_world: np.ndarray,
    protocol: Protocol,
    spec: SubjectSpec,
) -> list[dict]:
    """Calcification and iron dipoles rendered into ``image`` (and ``mimic_map``) on the target
    grid; returns every mimic's sidecar record (dipoles, veins, air-bone sites; world mm)."""
    b0, te = protocol.field_strength_t, protocol.te_ms
    records: list[dict] = []
    for d in plan.calcs + plan.foci:
        c_world = to_world[:3, :3] @ np.asarray(d.centre_mni) + to_world[:3, 3]
        out = render_dipole(
            c_world, d.moment, d.core_radius_mm, grid.affine, grid.shape, b0, te, spec.lesion_model
        )
        if out is not None:
            s, att = out
            image[s] *= att
            mimic_map[s][att <= 0.8] = MIMIC_CODES[d.kind]
        records.append(dipole_record(d, c_world))
    for v in plan.veins:
        pts_world = v.points @ to_world[:3, :3].T + to_world[:3, 3]
        records.append(
            {
                "type": "vein",
                "kind": v.kind,
                "centre_mm": _round(pts_world[len(pts_world) // 2]),
                "start_mm": _round(pts_world[0]),
                "end_mm": _round(pts_world[-1]),
                "radius_mm": round(v.radius_mm, 3),
                "length_mm": round(0.5 * (len(pts_world) - 1), 1),
                "centre_loss": round(v.loss, 3),
            }
        )
    for name, (c, a) in AIR_POCKETS.items():
        c_world = to_world[:3, :3] @ np.asarray(c) + to_world[:3, 3]
        records.append(
            {"type": "air_bone", "site": name, "centre_mm": _round(c_world), "radius_mm": a}
        )
    return records


def _render_cmbs(
    cmbs: list,
    image: np.ndarray,
    brain: np.ndarray,
    grid: Any,
    to_world: np.ndarray,
    protocol: Protocol,
    spec: SubjectSpec,
) -> tuple[np.ndarray, np.ndarray, list[dict], list[dict]]:
    """CMB dipoles rendered into ``image``; a CMB whose in-brain signal loss reaches
    ``KEEP_LOSS`` is labelled (its voxels with loss >= ``LABEL_LOSS``; overlapping CMBs: the
    stronger attenuation wins), a fainter one becomes an ignore region. Returns ``(instance
    label (uint16), ignore mask, kept records, ignored records)``."""
    b0, te = protocol.field_strength_t, protocol.te_ms
    label = np.zeros(grid.shape, dtype=np.uint16)
    best = np.ones(grid.shape, dtype=np.float32)  # the strongest CMB attenuation per voxel
    ignore = np.zeros(grid.shape, dtype=bool)
    kept: list[dict] = []
    ignored: list[dict] = []
    voxel_volume = float(np.prod(protocol.voxel_mm))
    for c in cmbs:
        c_world = to_world[:3, :3] @ np.asarray(c.centre_mni) + to_world[:3, 3]
        rec = {
            "centre_mm": _round(c_world),
            "moment": round(c.moment, 4),
            "region": c.region,
            "core_diameter_mm": round(2.0 * c.core_radius_mm, 3),
        }
        out = render_dipole(
            c_world, c.moment, c.core_radius_mm, grid.affine, grid.shape, b0, te, spec.lesion_model
        )
        if out is None:
            continue
        s, att = out
        image[s] *= att
        loss = (1.0 - att) * brain[s]
        max_loss = float(loss.max())
        rec["max_loss"] = round(max_loss, 3)
        if max_loss >= KEEP_LOSS:
            vox = loss >= LABEL_LOSS
            if not vox.any():
                vox = loss == loss.max()
            lid = len(kept) + 1
            sub_label, sub_best = label[s], best[s]
            take = vox & (att < sub_best)
            sub_label[take] = lid
            sub_best[take] = att[take]
            rec.update(id=lid, ignore=False, _s=s, _vox=vox)
            kept.append(rec)
        else:
            ignore[s] |= loss >= IGNORE_LOSS
            ignore[s][np.unravel_index(int(np.argmax(loss)), loss.shape)] = True
            rec.update(ignore=True, diameter_mm=0.0, n_voxels=0)
            ignored.append(rec)
    ignore &= label == 0
    for rec in kept:
        n = int((label[rec.pop("_s")] == rec["id"]).sum())
        rec.pop("_vox")
        rec["n_voxels"] = n
        rec["diameter_mm"] = round(float((6.0 * n * voxel_volume / np.pi) ** (1.0 / 3.0)), 3)
    for j, rec in enumerate(ignored):
        rec["id"] = len(kept) + 1 + j
    return label, ignore, kept, ignored


# ------------------------------------------------------------------ the T1-weighted channel
#: version of the T1-weighted extra channel (part of its cache fingerprint)
T1_VERSION = "1"
#: a 3D spoiled gradient echo with T1 weighting (short TR and TE): WM > GM > CSF, and at
#: TE = 2.5 ms a CMB's dipole field costs little signal (CMBs are nearly invisible on T1)
T1W_SEQUENCE = {"tr_ms": 20.0, "te_ms": 2.5, "flip_deg": 25.0}


def t1_fingerprint(spec: SubjectSpec) -> dict:
    """What a subject's T1-weighted image depends on: its spec and the T1 sequence."""
    return {
        "subject": spec.fingerprint(),
        "channel": "T1",
        "t1_version": T1_VERSION,
        "sequence": dict(T1W_SEQUENCE),
    }


def generate_t1(spec: SubjectSpec) -> tuple[np.ndarray, Grid]:
    """A T1-weighted image (float32, the subject's T2* grid ``grid.shape``) of the subject
    of ``spec``, and that grid.

    The same anatomy, pose, field of view, tissue jitter and CMB sites as
    :func:`generate_subject` (their named streams are re-drawn, never advanced further), a
    T1-weighted spoiled gradient echo (:data:`T1W_SEQUENCE`: no vein or air-bone drop-out,
    CMB dipoles at TE = 2.5 ms), then its own bias field, scale and Rician noise inside the
    brain from the stream ``"t1"`` only. The T2* image and every other stream are untouched,
    so asking for this channel changes no existing byte.
    """
    import dataclasses

    f = _frame(spec)
    preset, protocol, anat, rng = f.preset, f.protocol, f.anat, f.rng
    place_box, pose, grid, to_world = f.place_box, f.pose, f.grid, f.to_world
    plan = _plan(rng, preset, protocol, place_box)

    t1w = dataclasses.replace(protocol, name=f"{protocol.name}-T1w", **T1W_SEQUENCE)
    sl, sim_aff = _sim_crop(grid, pose, anat.affine, anat.shape)
    jitter, iron_gain = _subject_contrast(rng("contrast"))
    iron = 1.0 + (anat.iron[sl] - 1.0) * iron_gain
    sim, s_wm = tissue_image(anat.gm[sl], anat.wm[sl], anat.csf[sl], iron, t1w, jitter)
    image = acquire(sim, sim_aff, pose, grid)
    brain = acquire(anat.brain[sl].astype(np.float32), sim_aff, pose, grid) >= 0.5
    b0, te = t1w.field_strength_t, t1w.te_ms
    for c in plan.cmbs:
        c_world = to_world[:3, :3] @ np.asarray(c.centre_mni) + to_world[:3, 3]
        out = render_dipole(
            c_world, c.moment, c.core_radius_mm, grid.affine, grid.shape, b0, te, spec.lesion_model
        )
        if out is not None:
            image[out[0]] *= out[1]

    _bias_scale_noise(rng("t1"), image, brain, protocol, s_wm)
    return image.astype(np.float32, copy=False), grid
