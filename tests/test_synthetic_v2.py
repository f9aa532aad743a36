"""Generator 2.0: each new element at its configured rate, recorded, never labelled; ablations;
the warp's inverse; the detectable-ΔF1 estimate."""

from __future__ import annotations

import numpy as np
import pytest

from cmbbench.datasets.synthetic import artefacts, pathology, vessels
from cmbbench.datasets.synthetic.generator import MIMIC_CODES, generate_subject
from cmbbench.datasets.synthetic.presets import ELEMENTS, check_without
from cmbbench.datasets.synthetic.sampling import component_rng
from cmbbench.datasets.synthetic.subjects import SubjectSpec
from cmbbench.errors import InputError, UnknownNameError
from cmbbench.scoring.power import detectable_delta_f1


def _rngs(component: str, n: int):
    return (component_rng("2.0", 0, f"sub-{i:04d}", component) for i in range(1, n + 1))


def test_artefact_rates():
    # 15 % ghosting, 15 % ringing, 50 % parallel imaging: 2000 draws, binomial SE ≈ 0.008 / 0.011
    motion = [artefacts.plan_motion(r) for r in _rngs("motion", 2000)]
    assert abs(np.mean([m.ghost_fraction is not None for m in motion]) - 0.15) < 0.03
    assert abs(np.mean([m.ringing_keep is not None for m in motion]) - 0.15) < 0.03
    tex = [artefacts.plan_noise_texture(r) for r in _rngs("noise_texture", 2000)]
    assert abs(np.mean([t is not None for t in tex]) - 0.5) < 0.04


def test_pathology_rates():
    ages = [pathology.draw_age(r) for r in _rngs("age", 400)]
    assert 55 <= min(ages) and max(ages) <= 90
    # macro-haemorrhage 4 %, cavernoma 4 %: 1500 draws, SE ≈ 0.005
    macro = [pathology.plan_macro(r, None) for r in _rngs("macro", 1500)]
    kinds = [{d.kind for d in m} for m in macro]
    assert abs(np.mean(["macro_haemorrhage" in k for k in kinds]) - 0.04) < 0.02
    assert abs(np.mean(["cavernoma" in k for k in kinds]) - 0.04) < 0.02
    # siderosis: 25 % of lobar-only subjects, 4 % of the others
    lob = [bool(vessels.plan_siderosis(r, True, None)) for r in _rngs("siderosis", 600)]
    other = [bool(vessels.plan_siderosis(r, False, None)) for r in _rngs("siderosis", 600)]
    assert abs(np.mean(lob) - 0.25) < 0.06 and np.mean(other) < 0.08
    # lacunes grow with the WMH burden: none at burden 0, about 2 at burden 1 (capped at 5)
    assert all(not pathology.plan_lacunes(r, 0.0, None) for r in _rngs("lacunes", 50))
    n = [len(pathology.plan_lacunes(r, 1.0, None)) for r in _rngs("lacunes", 300)]
    assert 1.6 < np.mean(n) < 2.4 and max(n) <= 5


def test_mineralisation_wmh_and_rater_rates():
    from cmbbench.datasets.synthetic.generator import rater_agreement

    # basal-ganglia mineralisation in 30 % of 55-year-olds, 60 % of 90-year-olds (1500 draws
    # each, SE ≈ 0.012 / 0.013), 2-6 foci when present
    for age, rate in ((55.0, 0.3), (90.0, 0.6)):
        plans = [pathology.plan_mineralisation(r, age, None) for r in _rngs("mineral", 1500)]
        assert abs(np.mean([bool(p) for p in plans]) - rate) < 0.04
        assert {len(p) for p in plans if p} <= set(range(2, 7))
    # WMH burden clip((age - 55) / 35 + N(0, 0.25)): at 55 the mean of a clipped N(0, 0.25)
    # is 0.25 / sqrt(2 pi) = 0.0997; Poisson(6 b) deep patches, so 0.60 on average
    wmh = [pathology.plan_wmh(r, 55.0, None) for r in _rngs("wmh", 1500)]
    assert abs(np.mean([b for b, _ in wmh]) - 0.0997) < 0.012
    assert abs(np.mean([len(p) for _, p in wmh]) - 0.598) < 0.1
    assert (
        np.mean([b for b, _ in (pathology.plan_wmh(r, 90.0, None) for r in _rngs("w", 500))]) > 0.85
    )
    # raters: a faint CMB (loss < 0.45) gets agreement 0.5 w.p. 0.6, a clear one w.p. 0.05
    faint = [rater_agreement(r, 0.3) for r in _rngs("raters", 4000)]
    clear = [rater_agreement(r, 0.8) for r in _rngs("raters", 4000)]
    assert set(faint) == {0.5, 1.0} and abs(np.mean(np.array(faint) == 0.5) - 0.6) < 0.03
    assert abs(np.mean(np.array(clear) == 0.5) - 0.05) < 0.015


def test_vein_density_by_sequence():
    # SWI shows veins by the hundred, 2D T2*-GRE fewer (VEIN_COUNTS), all inside the brain
    swi = vessels.plan_veins_v2(
        component_rng("2.0", 0, "sub-0001", "veins"), "SWI", (0.5, 0.9), None
    )
    gre = vessels.plan_veins_v2(
        component_rng("2.0", 0, "sub-0001", "veins"), "T2*-GRE 2D", (0.3, 0.7), None
    )
    # VEIN_COUNTS: SWI 230-400, 2D T2*-GRE 100-200 (minus walks too short to keep)
    assert len(swi) >= 200 and 80 <= len(gre) <= 200 and len(swi) > 1.5 * len(gre)
    assert {v.kind for v in swi} == {"medullary", "cortical"}
    inside = vessels._inside(np.concatenate([v.points for v in swi]), None)
    assert inside.all()
    flow = vessels.plan_flow_voids(component_rng("2.0", 0, "sub-0001", "flow_voids"), None)
    assert {v.kind.split(":")[1].rsplit("_", 1)[0] for v in flow} >= {"internal_carotid"}


def test_tube_rendering_profile():
    # a straight tube of radius 0.7 (w = 1.0 mm) and loss 0.8: the voxel on its centre line
    # keeps 1 - 0.8 = 0.2, one 1 mm away keeps 1 - 0.8 exp(-1/2) = 0.515
    from cmbbench.datasets.synthetic.anatomy import load_anatomy
    from cmbbench.datasets.synthetic.mimics import Vein

    anat = load_anatomy()
    c = anat.affine[:3, :3] @ (np.asarray(anat.shape) // 2) + anat.affine[:3, 3]
    pts = c + np.arange(-10, 10.5, 0.5)[:, None] * np.array([0.0, 0.0, 1.0])
    att = vessels.render_tubes([Vein(pts, 0.7, 0.8, "cortical")])
    i, j, k = np.asarray(anat.shape) // 2
    assert att[i, j, k] == pytest.approx(0.2, abs=1e-5)
    assert att[i + 1, j, k] == pytest.approx(1 - 0.8 * np.exp(-0.5), abs=1e-5)
    assert att[i + 5, j, k] == 1.0


def test_warp_inverse_and_grid_agree():
    from cmbbench.datasets.synthetic.warp import MAX_GRADIENT, random_warp

    w = random_warp(
        np.random.default_rng(3), np.array([-80.0, -110, -70]), np.array([80.0, 80, 90])
    )
    pts = np.random.default_rng(4).uniform(-60, 60, size=(50, 3))
    back = w.inverse(pts)
    assert np.abs(back + w.displacement(back) - pts).max() < 1e-3
    assert 1.0 <= w.rms_mm <= 3.0 and w.max_mm < 15.0
    axes = (np.arange(-60, 60, 7.0), np.arange(-50, 50, 9.0), np.arange(-40, 40, 11.0))
    grid = w.on_grid(axes)
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    assert np.allclose(grid.reshape(3, -1).T, w.displacement(g), atol=1e-4)
    assert MAX_GRADIENT < 1.0


@pytest.fixture(scope="module")
def subject():
    return generate_subject(SubjectSpec("sub-0003", 0, "t2s2d_3t_1x1x3", "tiny"))


def test_v2_subject_records_every_element(subject):
    meta = subject.meta
    assert meta["generator_version"] == "2.0"
    assert meta["elements"] == list(ELEMENTS)
    assert 55 <= meta["age"] <= 90 and 0 <= meta["atrophy"] <= 1
    assert isinstance(meta["artefacts"], list)
    types = {m["type"] for m in meta["mimics"]}
    assert {"vein", "flow_void", "air_bone"} <= types
    assert all("centre_mm" in m for m in meta["mimics"])
    # every labelled CMB has the raters' agreement (1 or 0.5), also in lesion_attrs
    for c in meta["cmbs"]:
        if not c["ignore"]:
            assert c["agreement"] in (0.5, 1.0)
            assert meta["lesion_attrs"][c["id"]]["agreement"] == c["agreement"]
    # the mimic map holds only the known codes (its labelling is tested below)
    assert set(np.unique(subject.mimics)) <= set(MIMIC_CODES.values()) | {0}


@pytest.mark.parametrize(
    ("subject_id", "kinds"),
    [
        # quick-preset subjects (seed 0) with CMBs and every rare kind, found from sidecars
        ("sub-0011", {"calcification", "cavernoma", "iron_focus", "lacune", "siderosis"}),
        ("sub-0030", {"macro_haemorrhage", "lacune", "iron_focus", "vein", "flow_void"}),
    ],
)
def test_no_mimic_voxel_is_labelled(subject_id, kinds):
    # Every voxel a look-alike darkens (its code in the mimic map) is unlabelled, kind by kind;
    # the air-bone code is a region of field inhomogeneity, not an object, and a CMB may lie in
    # it (12 of 950,000 such voxels in 80 quick subjects are labelled), so it is not checked.
    s = generate_subject(SubjectSpec(subject_id, 0, "t2s2d_3t_1x1x3", "quick"))
    present = {k for k, code in MIMIC_CODES.items() if (s.mimics == code).any()}
    assert kinds <= present
    assert {m["type"] for m in s.meta["mimics"]} >= kinds  # and recorded in the sidecar
    assert (s.label > 0).any()
    for kind in present - {"air_bone"}:
        assert not (s.label[s.mimics == MIMIC_CODES[kind]] > 0).any(), kind


def test_ablation_changes_only_its_element(subject):
    spec = subject.spec
    no_motion = generate_subject(
        SubjectSpec(spec.subject_id, 0, spec.protocol, "tiny", without=("motion", "noise_texture"))
    )
    # the artefacts draw from their own streams: labels, mimics and plans are unchanged
    assert np.array_equal(no_motion.label, subject.label)
    assert np.array_equal(no_motion.mimics, subject.mimics)
    assert no_motion.meta["cmbs"] == subject.meta["cmbs"]
    assert "motion" not in no_motion.meta["elements"]
    assert no_motion.meta["artefacts"] == []
    assert no_motion.spec.fingerprint()["without"] == ["motion", "noise_texture"]
    assert "without" not in subject.spec.fingerprint()


def test_check_without():
    assert check_without("veins, motion") == ("motion", "veins")
    assert check_without(None) == ()
    with pytest.raises(UnknownNameError, match="known generator elements"):
        check_without("velociraptors")


def test_detectable_delta_f1_shrinks_with_the_split():
    # the same per-case counts repeated 4 times: the SE (and the detectable gap) about halves
    small = [0, 1, 1, 3, 0, 2, 8, 1, 0, 1, 1, 4, 0, 5]
    d_small = detectable_delta_f1(small)
    d_big = detectable_delta_f1(small * 4)
    assert 0.1 < d_small < 0.3
    assert d_big == pytest.approx(d_small / 2, rel=0.25)
    with pytest.raises(InputError, match="at least one labelled CMB"):
        detectable_delta_f1([0, 0])


def test_agreement_labels(tmp_path):
    import cmbbench

    ds = cmbbench.load_dataset(
        "synthetic", preset="tiny", n=3, labels="agreement", cache_dir=tmp_path, progress=False
    )
    assert ds.info.label_kind == "agreement" and ds.options["labels"] == "agreement"
    inst = cmbbench.load_dataset(
        "synthetic", preset="tiny", n=3, cache_dir=tmp_path, progress=False
    )
    for case, plain in zip(ds, inst, strict=True):
        # the same voxels, each CMB's holding the raters' share from the sidecar
        assert np.array_equal(case.label > 0, plain.label > 0)
        for lid, attrs in plain.meta["lesion_attrs"].items():
            assert set(np.unique(case.label[plain.label == lid])) == {attrs["agreement"]}
    with pytest.raises(InputError, match="needs the simulated raters"):
        cmbbench.load_dataset("synthetic", preset="tiny", version="1.1", labels="agreement")


def test_data_show_centres_on_mimics(tmp_path):
    from typer.testing import CliRunner

    from cmbbench.cli import app

    args = ["data", "show", "synthetic", "sub-0003", "--preset", "tiny", "--root", str(tmp_path)]
    out = tmp_path / "m.png"
    r = CliRunner().invoke(app, [*args, "--focus", "mimics", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(app, [*args, "--focus", "veins", "--out", str(out)])
    assert r.exit_code == 1 and "cmbs or mimics" in r.output


@pytest.mark.slow
def test_label_statistics_of_the_quick_preset_match_valdo():
    """The quick preset's CMBs against the VALDO / literature figures of SYNTHETIC.md:
    count hurdle and locations over all 232 planned subjects, sizes over 16 rendered ones."""
    from collections import Counter

    from cmbbench.datasets.summary import equivalent_diameter_mm
    from cmbbench.datasets.synthetic.dataset import _specs
    from cmbbench.datasets.synthetic.generator import _frame, _plan
    from cmbbench.datasets.synthetic.sampling import REGION_FREQ

    specs = _specs("quick", None, 0, None, "dipole")
    assert len(specs) == 232
    plans = [_plan(_frame(s)) for s in specs]
    counts = np.array([p.count for p in plans])
    # VALDO (72 subjects): P(0) = 22/72 = 0.31, P(1 | any) = 30/50 = 0.60; with 232 subjects
    # the binomial SEs are 0.030 and 0.038: three of them as the tolerance
    assert abs((counts == 0).mean() - 0.31) < 0.09
    assert abs((counts[counts > 0] == 1).mean() - 0.60) < 0.12
    assert counts.max() > 10  # the long tail (VALDO up to 83; the preset caps it)
    # locations (957 CMBs over five datasets): each region's share within 0.05 of the mix
    regions = Counter(c.region for p in plans for c in p.cmbs)
    n = sum(regions.values())
    assert n >= 500
    for region, share in REGION_FREQ.items():
        assert abs(regions[region] / n - share) < 0.05, (region, regions[region] / n, share)
    # sizes of the labelled CMBs at 1x1x3 mm: VALDO median 4 voxels (2-32) at 1x1x3-4 mm,
    # equivalent-sphere diameter median 2.7 mm (IQR 2.4-3.2)
    sizes, labelled, planned = [], 0, 0
    for s in [s for s, c in zip(specs, counts, strict=True) if c > 0][:16]:
        sub = generate_subject(s)
        ids, vox = np.unique(sub.label[sub.label > 0], return_counts=True)
        sizes.extend(vox.tolist())
        labelled += len(ids)
        planned += sub.meta["n_cmb"] + sub.meta["n_ignore"]
        assert sub.meta["voxel_mm"] == [1.0, 1.0, 3.0]
    assert len(sizes) >= 40
    assert 3 <= np.median(sizes) <= 6 and min(sizes) >= 1 and max(sizes) <= 60
    diam = equivalent_diameter_mm(np.asarray(sizes), (1.0, 1.0, 3.0))
    assert 2.4 <= np.median(diam) <= 3.3, np.median(diam)
    assert labelled / planned > 0.7  # most placed CMBs are visible enough to be labelled


def _tissue_reference(p, gm, wm, csf, vdist, sulc, affine):
    """apply_to_tissue as first written: every lacune step over the whole volume."""
    gm, wm, csf = gm.copy(), wm.copy(), csf.copy()
    f = pathology._band(vdist, 4.0 * p.atrophy)
    g = np.maximum(f, sulc * np.float32(0.6 * p.atrophy))
    csf += gm * g + wm * f
    gm *= 1.0 - g
    wm *= 1.0 - f
    wmh = pathology._band(vdist, 8.0 * p.wmh_burden) * np.float32(0.5 + 0.5 * p.wmh_burden)
    for b in p.wmh_patches:
        out = pathology.soft_blob(gm.shape, affine, b)
        if out is not None:
            wmh[out[0]] = np.maximum(wmh[out[0]], out[1])
    wmh = np.minimum(wmh, 1.0) * wm
    lac = np.zeros(gm.shape, dtype=np.float32)
    rim = np.zeros(gm.shape, dtype=np.float32)
    for b in p.lacunes:
        out = pathology.soft_blob(gm.shape, affine, b)
        if out is None:
            continue
        lac[out[0]] = np.maximum(lac[out[0]], out[1])
        big = pathology.Blob(b.kind, b.centre, tuple(a + 1.0 for a in b.axes))
        out2 = pathology.soft_blob(gm.shape, affine, big)
        if out2 is not None:
            rim[out2[0]] = np.maximum(rim[out2[0]], out2[1])
    csf += (gm + wm) * lac
    gm *= 1.0 - lac
    wm *= 1.0 - lac
    rim = np.clip(rim - lac, 0.0, 1.0) * wm
    return gm, wm, csf, np.maximum(wmh * (1.0 - lac), rim), lac


@pytest.mark.parametrize("seed", range(6))
def test_lacunes_change_only_their_box_bit_for_bit(seed):
    # apply_to_tissue works on the lacunes' bounding box only; seeded random tissue and
    # lacunes (inside, across the edge of and outside the grid) give the whole-volume
    # computation's fractions bit for bit
    rng = np.random.default_rng(seed)
    shape = (30, 34, 26)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-15.0, -17.0, -13.0)
    gm, wm, csf, sulc = (rng.uniform(0.0, 1.0, shape).astype(np.float32) for _ in range(4))
    vdist = rng.integers(0, 20, shape)
    lacunes = [
        pathology.Blob("lacune", tuple(rng.uniform(-25.0, 25.0, 3)), tuple(rng.uniform(1, 4, 3)))
        for _ in range(int(rng.integers(1, 5)))
    ]
    patches = [pathology.Blob("wmh", tuple(rng.uniform(-10.0, 10.0, 3)), (3.0, 2.0, 2.0))]
    p = pathology.Pathology(
        age=70.0, atrophy=0.5, wmh_burden=0.4, wmh_patches=patches, lacunes=lacunes
    )
    got = pathology.apply_to_tissue(
        p, gm, wm, csf, vdist, sulc, affine, atrophy=True, wmh=True, lacunes=True
    )
    want = _tissue_reference(p, gm, wm, csf, vdist, sulc, affine)
    for name, a, b in zip(("gm", "wm", "csf", "wmh", "lacune"), got, want, strict=True):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=name)


def test_every_mimic_kind_says_why_it_is_unlabelled(subject, tmp_path):
    from cmbbench.datasets.synthetic.cache import read_sidecar, write_subject
    from cmbbench.datasets.synthetic.dataset import _case
    from cmbbench.datasets.synthetic.unlabelled import UNLABELLED_BECAUSE

    assert set(MIMIC_CODES) | {"wmh"} <= set(UNLABELLED_BECAUSE)
    write_subject(tmp_path, subject)
    case = _case(tmp_path, subject.spec.subject_id)
    recs = case.meta["mimics"]
    assert recs and len(recs) == len(subject.meta["mimics"])
    for rec, raw in zip(recs, subject.meta["mimics"], strict=True):
        assert rec["unlabelled_because"] == UNLABELLED_BECAUSE[raw["type"]]
        assert {k: v for k, v in rec.items() if k != "unlabelled_because"} == raw
    # added on load: the cached sidecar (frozen bytes) does not hold it
    side = read_sidecar(tmp_path, subject.spec.subject_id)
    assert all("unlabelled_because" not in m for m in side["meta"]["mimics"])
