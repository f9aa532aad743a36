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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cmbbench.datasets.synthetic import artefacts, pathology, vessels
from cmbbench.datasets.synthetic.acquisition import (
    Grid,
    acquire,
    acquire_mask,
    acquire_region,
    bias_field,
    box_corners,
    nearest_voxels,
    random_pose,
    rician_noise,
    sample_near,
    target_grid,
    warped_coords,
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
from cmbbench.datasets.synthetic.presets import ELEMENTS, get_preset
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
from cmbbench.datasets.synthetic.warp import Warp, random_warp

#: mimic map codes (the ``desc-mimics_dseg`` file); 5–9 appear from generator 2.0 on
MIMIC_CODES = {
    "vein": 1,
    "calcification": 2,
    "iron_focus": 3,
    "air_bone": 4,
    "flow_void": 5,
    "siderosis": 6,
    "macro_haemorrhage": 7,
    "cavernoma": 8,
    "lacune": 9,
}


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
    # ``pad`` (simulation voxels) also covers a warp's displacement (generator 2.x)
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
    spec: SubjectSpec
    warp: Warp | None = None

    def point_to_world(self, p: Any) -> np.ndarray:
        """World mm (3,) of the template point ``p`` (3,) mm: where the subject's anatomy
        put it (inverse warp), then the pose."""
        q = self.to_world[:3, :3] @ np.asarray(p, dtype=np.float64) + self.to_world[:3, 3]
        if self.warp is not None:
            q = self.warp.inverse(q[None])[0]
        return q

    def points_to_world(self, pts: np.ndarray) -> np.ndarray:
        """World mm (N, 3) of template points (N, 3) mm (see :meth:`point_to_world`)."""
        q = pts @ self.to_world[:3, :3].T + self.to_world[:3, 3]
        return q if self.warp is None else self.warp.inverse(q)

    @property
    def sim_pad(self) -> int:
        """Simulation-crop margin (voxels) covering the warp's largest displacement."""
        if self.warp is None:
            return 4
        return 4 + int(np.ceil(self.warp.max_mm))


def _frame(spec: SubjectSpec) -> _Frame:
    """The subject's frame (draws only the ``"pose"`` and, generator 2.x, ``"warp"`` streams)."""
    preset = get_preset(spec.preset, spec.version)
    protocol: Protocol = get_protocol(spec.protocol)
    rng = lambda comp: component_rng(spec.version, spec.seed, spec.subject_id, comp)  # noqa: E731
    place_box = _grow(preset.box_mm, -5.0) if preset.box_mm is not None else None
    pose = random_pose(rng("pose"))
    anat = load_anatomy()
    warp = None
    fov = box_corners(preset.box_mm) if preset.box_mm is not None else _brain_surface()
    if spec.has("warp"):
        inv = np.linalg.inv(pose)
        surface_world = _brain_surface()[::7] @ inv[:3, :3].T + inv[:3, 3]
        warp = random_warp(rng("warp"), surface_world.min(0), surface_world.max(0))
        if preset.box_mm is None:  # the field of view follows the warped brain
            fov = warp.inverse(surface_world) @ pose[:3, :3].T + pose[:3, 3]
    grid = target_grid(pose, fov, protocol.voxel_mm, preset.margin_mm)
    return _Frame(
        preset, protocol, anat, rng, place_box, pose, grid, np.linalg.inv(pose), spec, warp
    )


def generate_subject(spec: SubjectSpec) -> Subject:
    """Generate one subject (deterministic: same spec -> byte-identical arrays).

    Plan (count, pattern, mimics, pathology, CMB sites) -> 1 mm tissue simulation (atrophy,
    WMH, lacunes, veins, flow voids, siderosis, air-bone drop-out), acquired on the protocol's
    grid (through the subject's warp) -> mimic and CMB dipoles rendered on that grid (labels
    from the CMBs' signal loss) -> bias, scale, motion artefacts and (textured) Rician noise
    inside the brain. Every random draw comes from a named per-subject stream
    (``component_rng``), so the stages can be read, changed and ablated one at a time;
    generator 1.0 subjects take none of the 2.x elements (:data:`~.presets.ELEMENTS`).
    """
    f = _frame(spec)
    rng, protocol, grid = f.rng, f.protocol, f.grid

    plan = _plan(f)
    image, brain, mimic_map, s_wm = _simulate(f, plan)
    mimic_records = _render_mimics(f, plan, image, mimic_map)
    label, ignore, kept, ignored = _render_cmbs(f, plan.cmbs, image, brain)

    # ---- bias, scale, artefacts, noise, mask ------------------------------------------------------
    motion = artefacts.plan_motion(rng("motion")) if spec.has("motion") else None
    texture = (
        artefacts.plan_noise_texture(rng("noise_texture")) if spec.has("noise_texture") else None
    )
    snr, rms = _bias_scale_noise(
        rng("noise"), image, brain, protocol, s_wm, motion, texture, rng("noise_texture")
    )
    label[~brain] = 0
    scan_artefacts = [
        rec
        for rec in (motion.record() if motion else None, texture.record() if texture else None)
        if rec is not None
    ]

    cmb_records = [{k: r[k] for k in _CMB_RECORD_KEYS if k in r} for r in kept + ignored]
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
        "pose": [_round(row, 6) for row in f.pose],
    }
    if spec.version != "1.0":
        p = plan.pathology
        meta["elements"] = [e for e in ELEMENTS if spec.has(e)]
        meta["age"] = round(p.age, 1)
        meta["atrophy"] = round(p.atrophy, 3)
        meta["wmh_burden"] = round(p.wmh_burden, 3) if spec.has("wmh") else 0.0
        meta["warp_rms_mm"] = round(f.warp.rms_mm, 3) if f.warp is not None else 0.0
        meta["artefacts"] = scan_artefacts
        if spec.has("raters"):
            for r in kept:
                meta["lesion_attrs"][r["id"]]["agreement"] = r["agreement"]
    return Subject(spec, grid, image.astype(np.float32, copy=False), label, ignore, mimic_map, meta)


def _bias_scale_noise(
    nrng: Any,
    image: np.ndarray,
    brain: np.ndarray,
    protocol: Protocol,
    s_wm: float,
    motion: artefacts.MotionPlan | None = None,
    texture: artefacts.NoiseTexture | None = None,
    trng: Any = None,
) -> tuple[float, float]:
    """In place: a bias field, the protocol's scale (white matter at ``protocol.scale``,
    jittered), motion artefacts (``motion``), and Rician noise at the drawn SNR inside the
    brain (textured by ``texture``, drawn from ``trng``), 0 outside (a masked acquisition).
    Returns ``(snr, bias rms)``; every draw but the texture's from ``nrng``."""
    snr = float(nrng.uniform(*protocol.snr))
    rms = float(nrng.uniform(0.10, 0.20))
    scale = protocol.scale * float(nrng.uniform(0.8, 1.25)) / s_wm
    image *= bias_field(nrng, image.shape, rms)
    image *= np.float32(scale)
    if motion is not None:
        artefacts.apply_motion(image, motion)
    sigma = protocol.scale / snr
    if texture is None:
        image[brain] = rician_noise(nrng, image[brain], sigma)
    else:
        n1 = artefacts.textured_noise(trng, image.shape, texture)[brain]
        n2 = artefacts.textured_noise(trng, image.shape, texture)[brain]
        re = image[brain] + np.float32(sigma) * n1
        image[brain] = np.sqrt(re * re + (np.float32(sigma) * n2) ** 2)
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
    "agreement",
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
    flow_voids: list = field(default_factory=list)
    siderosis: list = field(default_factory=list)
    pathology: pathology.Pathology | None = None


def _plan(f: _Frame) -> _Plan:
    """CMB count and pattern, veins, calcifications, iron foci (generator 2.x: pathology,
    flow voids, siderosis, macro lesions, mineralisation), then CMB sites away from them."""
    rng, preset, protocol, place_box, spec = f.rng, f.preset, f.protocol, f.place_box, f.spec
    count = sample_count(rng("count"), preset.count_cap)
    lobar_only = bool(rng("pattern").random() < P_LOBAR_ONLY)
    v2 = spec.version != "1.0"
    if spec.has("veins"):
        veins = vessels.plan_veins_v2(
            rng("veins"), protocol.sequence, protocol.vein_loss, place_box
        )
    else:
        veins = plan_veins(rng("veins"), protocol.vein_loss, place_box)
    calcs = plan_calcifications(rng("calcifications"), place_box)
    foci = plan_iron_foci(rng("iron"), place_box)
    path = flow = sid = None
    if v2:
        age = pathology.draw_age(rng("age"))
        path = pathology.Pathology(age)
        burden, patches = pathology.plan_wmh(rng("wmh"), age, place_box)
        path.wmh_burden = burden
        if spec.has("wmh"):
            path.wmh_patches = patches
        if spec.has("atrophy"):
            path.atrophy = pathology.plan_atrophy(rng("atrophy"), age)
        if spec.has("lacunes"):
            path.lacunes = pathology.plan_lacunes(rng("lacunes"), burden, place_box)
        if spec.has("macro"):
            path.macro = pathology.plan_macro(rng("macro"), place_box)
        if spec.has("calcification"):
            path.mineral = pathology.plan_mineralisation(rng("mineralisation"), age, place_box)
        flow = (
            vessels.plan_flow_voids(rng("flow_voids"), place_box) if spec.has("flow_voids") else []
        )
        sid = (
            vessels.plan_siderosis(rng("siderosis"), lobar_only, place_box)
            if spec.has("siderosis")
            else []
        )
    avoid = [v.points for v in veins + (flow or []) + (sid or [])]
    avoid += [np.asarray([d.centre_mni]) for d in calcs + foci]
    if path is not None:
        avoid.append(path.avoid_points())
    avoid = [a for a in avoid if len(a)]
    avoid_pts = np.concatenate(avoid, axis=0) if avoid else None
    b0, te = protocol.field_strength_t, protocol.te_ms
    accept = None
    if path is not None and path.atrophy > 0:
        clear = 4.0 * path.atrophy + 2.0  # the grown ventricles and a margin (mm)
        anat, inv = f.anat, np.linalg.inv(f.anat.affine)

        def accept(c: np.ndarray) -> bool:
            ijk = np.clip(
                np.rint(inv[:3, :3] @ c + inv[:3, 3]).astype(int), 0, np.asarray(anat.shape) - 1
            )
            return bool(anat.ventricle_dist[tuple(ijk)] > clear)

    cmbs = place_cmbs(
        rng("cmbs"),
        count,
        region_weights(lobar_only),
        b0,
        te,
        place_box,
        avoid_pts,
        avoid_mm=3.0,
        accept=accept,
    )
    return _Plan(count, lobar_only, veins, calcs, foci, cmbs, flow or [], sid or [], path)


def _subject_contrast(crng: np.random.Generator) -> tuple[dict, np.float32]:
    """The subject's tissue-parameter multipliers (``jitter[tissue][pd|t1|t2s]``, U(0.9, 1.1))
    and iron gain (U(0.8, 1.2)), from its ``"contrast"`` stream, in that order."""
    jitter = {
        t: {k: float(crng.uniform(0.9, 1.1)) for k in ("pd", "t1", "t2s")}
        for t in ("gm", "wm", "csf")
    }
    return jitter, np.float32(crng.uniform(0.8, 1.2))


def _sampling(f: _Frame, sim_aff: np.ndarray) -> np.ndarray | None:
    """Where each target voxel samples the simulation crop through the warp (or ``None``)."""
    if f.warp is None:
        return None
    a, shape = f.grid.affine, f.grid.shape
    axes = tuple(a[i, i] * np.arange(shape[i], dtype=np.float64) + a[i, 3] for i in range(3))
    u = f.warp.on_grid(axes)  # (3, X, Y, Z) world mm
    for i in range(3):  # world position of each voxel's anatomy: its centre + u
        u[i] += axes[i].astype(np.float32).reshape([-1 if j == i else 1 for j in range(3)])
    return warped_coords(u, np.linalg.inv(sim_aff) @ f.pose)


def _tissue(f: _Frame, plan: _Plan, protocol: Protocol) -> tuple:
    """The subject's 1 mm tissue signal under ``protocol`` on its simulation crop (contrast
    jitter, iron, atrophy, WMH, lacunes): ``(signal, WM signal, crop slices, crop affine,
    lacune fraction or None)``."""
    anat, spec = f.anat, f.spec
    sl, sim_aff = _sim_crop(f.grid, f.pose, anat.affine, anat.shape, pad=f.sim_pad)
    jitter, iron_gain = _subject_contrast(f.rng("contrast"))
    iron = 1.0 + (anat.iron[sl] - 1.0) * iron_gain
    gm, wm, csf, wmh, lacune = anat.gm[sl], anat.wm[sl], anat.csf[sl], None, None
    if plan.pathology is not None:
        gm, wm, csf, wmh, lacune = pathology.apply_to_tissue(
            plan.pathology,
            gm,
            wm,
            csf,
            pathology.ventricle_index()[sl],
            pathology.sulcal_exposure()[sl],
            sim_aff,
            atrophy=spec.has("atrophy"),
            wmh=spec.has("wmh"),
            lacunes=spec.has("lacunes"),
        )
    sim, s_wm = tissue_image(gm, wm, csf, iron, protocol, jitter, wmh=wmh)
    return sim, s_wm, sl, sim_aff, lacune


def _acquired(
    f: _Frame, sim: np.ndarray, sl: tuple, sim_aff: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The 1 mm signal ``sim`` (on the crop ``sl``, voxel -> template mm ``sim_aff``) and the
    brain mask acquired on the subject's grid: ``(image, brain, sample coords or None,
    their nearest voxels or None)`` (coords only through a warp; see :func:`_sampling`)."""
    coords = _sampling(f, sim_aff)
    near = None if coords is None else nearest_voxels(coords, sim.shape)
    image = acquire(sim, sim_aff, f.pose, f.grid, coords=coords, nearest=near)
    brain = acquire_mask(f.anat.brain[sl], sim_aff, f.pose, f.grid, coords=coords, nearest=near)
    return image, brain, coords, near


def _simulate(f: _Frame, plan: _Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The 1 mm tissue image (:func:`_tissue`, veins and the other tubes, air-bone drop-out)
    acquired on the target grid: ``(image, brain mask, mimic code map, white-matter signal)``."""
    grid, pose, protocol, spec = f.grid, f.pose, f.protocol, f.spec
    b0, te = protocol.field_strength_t, protocol.te_ms
    sim, s_wm, sl, sim_aff, lacune = _tissue(f, plan, protocol)
    if spec.has("veins"):
        vein_att = vessels.render_tubes(plan.veins, vessels.bloom_factor(b0, te))[sl]
    else:
        vein_att = render_veins(plan.veins)[sl]
    air = airbone_attenuation(b0, te, tuple(protocol.voxel_mm))[sl]
    sim *= vein_att
    sim *= air
    tubes = [("air_bone", air, 0.3), ("vein", vein_att, 0.2)]
    for code, group in (("flow_void", plan.flow_voids), ("siderosis", plan.siderosis)):
        if group:
            att = vessels.render_tubes(group)[sl]
            sim *= att
            tubes.append((code, att, 0.2))

    image, brain, coords, near = _acquired(f, sim, sl, sim_aff)
    mimic_map = np.zeros(grid.shape, dtype=np.uint8)
    # (volume, region, the voxels to mark given a value, code); each threshold is one the
    # volume outside its region never meets, so only the voxels a region reaches matter
    marks: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray], str]] = [
        (att, att < 1.0 - min_loss / 2.0, lambda v, m=min_loss: (1.0 - v) >= m, code)
        for code, att, min_loss in tubes
    ]
    if lacune is not None:
        marks.append((lacune, lacune > 0.25, lambda v: v >= 0.5, "lacune"))
    if coords is None:  # an affine pose: the region's box of the target grid
        for volume, region, hits, code in marks:
            out = acquire_region(volume, sim_aff, pose, grid, region)
            if out is not None:
                s, sub = out
                mimic_map[s][hits(sub) & brain[s]] = MIMIC_CODES[code]
    else:
        # through the warp: only the target voxels each region reaches are sampled. (The
        # region's box of the target grid, which bounded this before, never mattered: a
        # marked voxel is in the brain, so its sample point is within a voxel of the crop,
        # and one of its neighbours in the region puts it within 2 voxels of the region.)
        flat_map, flat_brain = mimic_map.ravel(), brain.ravel()
        for volume, region, hits, code in marks:
            idx, values = sample_near(volume, coords, region, near)
            flat_map[idx[hits(values) & flat_brain[idx]]] = MIMIC_CODES[code]
    return image, brain, mimic_map, s_wm


def _tube_records(f: _Frame, tubes: list[Any], kind_type: str) -> list[dict]:
    """Sidecar records of veins / flow voids / siderosis bands (world mm of the case grid)."""
    if not tubes:
        return []
    # only the three recorded points of each tube go through the warp's inverse (one call;
    # the inverse is per point)
    picked = np.concatenate([v.points[[0, len(v.points) // 2, -1]] for v in tubes])
    world = f.points_to_world(picked).reshape(len(tubes), 3, 3)
    records = []
    for v, (start, centre, end) in zip(tubes, world, strict=True):
        rec = {
            "type": kind_type,
            "kind": v.kind.split(":", 1)[-1],
            "centre_mm": _round(centre),
            "start_mm": _round(start),
            "end_mm": _round(end),
            "radius_mm": round(v.radius_mm, 3),
            "length_mm": round(0.5 * (len(v.points) - 1), 1),
            "centre_loss": round(v.loss, 3),
        }
        if kind_type == "siderosis":
            rec.pop("kind")
            rec["width_mm"] = rec.pop("radius_mm")
        records.append(rec)
    return records


def _render_mimics(f: _Frame, plan: _Plan, image: np.ndarray, mimic_map: np.ndarray) -> list[dict]:
    """Calcification, iron, mineralisation and macro-lesion dipoles rendered into ``image``
    (and ``mimic_map``) on the target grid; returns every mimic's sidecar record (dipoles,
    tubes, pathology, air-bone sites; world mm)."""
    grid, protocol, spec = f.grid, f.protocol, f.spec
    b0, te = protocol.field_strength_t, protocol.te_ms
    records: list[dict] = []
    path = plan.pathology
    dipoles = plan.calcs + plan.foci + ((path.mineral + path.macro) if path is not None else [])
    for d in dipoles:
        c_world = f.point_to_world(d.centre_mni)
        out = render_dipole(
            c_world, d.moment, d.core_radius_mm, grid.affine, grid.shape, b0, te, spec.lesion_model
        )
        if out is not None:
            s, att = out
            image[s] *= att
            mimic_map[s][att <= 0.8] = MIMIC_CODES[d.kind]
        records.append(dipole_record(d, c_world))
    records += _tube_records(f, plan.veins, "vein")
    records += _tube_records(f, plan.flow_voids, "flow_void")
    records += _tube_records(f, plan.siderosis, "siderosis")
    if path is not None:
        for b in path.lacunes:
            records.append(
                {
                    "type": "lacune",
                    "centre_mm": _round(f.point_to_world(b.centre)),
                    "diameter_mm": round(2.0 * max(b.axes), 2),
                    "region": b.region,
                }
            )
        for b in path.wmh_patches:
            records.append(
                {
                    "type": "wmh",
                    "centre_mm": _round(f.point_to_world(b.centre)),
                    "diameter_mm": round(2.0 * max(b.axes), 2),
                }
            )
    for name, (c, a) in AIR_POCKETS.items():
        c_world = f.point_to_world(c)
        records.append(
            {"type": "air_bone", "site": name, "centre_mm": _round(c_world), "radius_mm": a}
        )
    return records


def _render_cmbs(
    f: _Frame, cmbs: list, image: np.ndarray, brain: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[dict], list[dict]]:
    """CMB dipoles rendered into ``image``; a CMB whose in-brain signal loss reaches
    ``KEEP_LOSS`` is labelled (its voxels with loss >= ``LABEL_LOSS``; overlapping CMBs: the
    stronger attenuation wins), a fainter one becomes an ignore region. With raters
    (generator 2.x), each kept CMB gets the share of two simulated raters who mark it
    (``agreement`` 1 or 0.5: a faint CMB, max loss < 45 %, is missed by one rater w.p. 0.6,
    a clear one w.p. 0.05). Returns ``(instance label (uint16), ignore mask, kept records,
    ignored records)``."""
    grid, protocol, spec = f.grid, f.protocol, f.spec
    b0, te = protocol.field_strength_t, protocol.te_ms
    label = np.zeros(grid.shape, dtype=np.uint16)
    best = np.ones(grid.shape, dtype=np.float32)  # the strongest CMB attenuation per voxel
    ignore = np.zeros(grid.shape, dtype=bool)
    kept: list[dict] = []
    ignored: list[dict] = []
    voxel_volume = float(np.prod(protocol.voxel_mm))
    for c in cmbs:
        c_world = f.point_to_world(c.centre_mni)
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
    if spec.has("raters"):
        rrng = f.rng("raters")
        for rec in kept:
            rec["agreement"] = rater_agreement(rrng, rec["max_loss"])
    return label, ignore, kept, ignored


def rater_agreement(rng: np.random.Generator, max_loss: float) -> float:
    """The share of two simulated raters who mark a labelled CMB whose peak signal loss is
    ``max_loss`` (0-1): a faint one (loss < 45 %) is missed by one of them w.p. 0.6, a clear
    one w.p. 0.05 (agreement 0.5), else both mark it (1.0). One draw from ``rng``."""
    p_miss = 0.6 if max_loss < 0.45 else 0.05
    return 0.5 if rng.random() < p_miss else 1.0


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
    protocol, grid = f.protocol, f.grid
    plan = _plan(f)
    t1w = dataclasses.replace(protocol, name=f"{protocol.name}-T1w", **T1W_SEQUENCE)
    sim, s_wm, sl, sim_aff, _lacune = _tissue(f, plan, t1w)
    image, brain, _coords, _near = _acquired(f, sim, sl, sim_aff)
    b0, te = t1w.field_strength_t, t1w.te_ms
    for c in plan.cmbs:
        out = render_dipole(
            f.point_to_world(c.centre_mni),
            c.moment,
            c.core_radius_mm,
            grid.affine,
            grid.shape,
            b0,
            te,
            spec.lesion_model,
        )
        if out is not None:
            image[out[0]] *= out[1]

    _bias_scale_noise(f.rng("t1"), image, brain, protocol, s_wm)
    return image.astype(np.float32, copy=False), grid
