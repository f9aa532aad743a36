"""`cmbbench data ...`: list, inspect, show, generate and export datasets (thin calls into the library)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from cmbbench.cli._app import app, console, err_console, fail
from cmbbench.cli.progress import rich_progress
from cmbbench.errors import CmbbenchError
from cmbbench.options import parse_key_values

data_app = typer.Typer(
    name="data",
    help="Datasets: list them, summarise one, draw a case, generate the synthetic set, export to nnU-Net.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

RootOpt = Annotated[
    Path | None,
    typer.Option("--root", help="Dataset folder (needed by every dataset except synthetic)."),
]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Dataset preset (synthetic).")]
SplitFileOpt = Annotated[
    Path | None,
    typer.Option("--split-file", help='JSON {"train": [...], "val": [...], "test": [...]}.'),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of the dataset / of the computed split.")
]
OptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--opt",
        "-o",
        help="Dataset option KEY=VALUE (repeatable; VALUE is JSON or text, a,b,c is a list), "
        "e.g. -o space=voxel, -o channels=T2S,T1.",
    ),
]


def _options(
    preset: str | None, split_file: Path | None, seed: int, opts: list[str] | None
) -> dict[str, Any]:
    options = parse_key_values(opts, what="--opt")
    if preset is not None:
        options["preset"] = preset
    if split_file is not None:
        options["split_file"] = str(split_file)
    options["seed"] = seed
    return options


def _progress():
    """The CLI's progress renderer on stderr, removed when done (the output is a table)."""
    return rich_progress(console=err_console, transient=True)


def _load(name: str, root: Path | None, split: str | None, options: dict[str, Any]):
    """``load_dataset`` with a progress bar for datasets that generate or cache on load."""
    from cmbbench.datasets.registry import dataset_info, load_dataset

    root_s = str(root) if root is not None else None
    if dataset_info(name).generates:
        with _progress() as progress:
            return load_dataset(name, root=root_s, split=split, progress=progress, **options)
    return load_dataset(name, root=root_s, split=split, **options)


@data_app.command("list")
def list_command() -> None:
    """List the registered datasets with their default scoring rule."""
    from cmbbench.datasets.registry import dataset_info, list_datasets

    table = Table(title="datasets")
    for col in ("name", "version", "default rule", "labels", "needs --root", "description"):
        table.add_column(col)
    for name in list_datasets():
        info = dataset_info(name)
        params = ", ".join(f"{k}={v}" for k, v in info.rule_params.items())
        rule = info.default_rule + (f" ({params})" if params else "")
        table.add_row(
            name,
            info.version,
            rule,
            info.label_kind,
            "yes" if info.needs_root else "no",
            info.description,
        )
    console.print(table)


def _dist(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    a = np.asarray(values, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return f"median {med:{fmt}} (IQR {q1:{fmt}}–{q3:{fmt}}, range {a.min():{fmt}}–{a.max():{fmt}})"


@data_app.command("info")
def info_command(
    name: Annotated[str, typer.Argument(help="Dataset name (see `cmbbench data list`).")],
    root: RootOpt = None,
    split: Annotated[
        str | None, typer.Option("--split", help="train, val or test (default: all).")
    ] = None,
    preset: PresetOpt = None,
    split_file: SplitFileOpt = None,
    seed: SeedOpt = 0,
    opt: OptOpt = None,
) -> None:
    """Summarise a dataset: cases, CMB counts and sizes, negatives, grids, cohorts/protocols."""
    from cmbbench.datasets.summary import summarize_dataset

    try:
        ds = _load(name, root, split, _options(preset, split_file, seed, opt))
        with _progress() as progress:
            s = summarize_dataset(ds, progress=progress)
    except CmbbenchError as err:
        raise fail(str(err)) from None

    info = ds.info
    counts = list(s.counts.values())
    title = f"{info.name} v{info.version}" + (f", split {s.split}" if s.split else "")
    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("cases", str(s.n_cases))
    t.add_row("labelled cases", str(s.n_labelled))
    t.add_row("negatives (no CMB)", str(s.n_negative))
    t.add_row("CMBs total", str(s.n_cmb))
    t.add_row("CMBs per case", _dist(counts, ".3g") if counts else "n/a")
    t.add_row("cases by CMB count", ", ".join(f"{b}: {n}" for b, n in s.count_bins().items()))
    t.add_row("CMB size (voxels)", _dist(s.sizes_voxels, ".3g"))
    t.add_row("CMB diameter (mm, equiv. sphere)", _dist(s.diameters_mm, ".2f"))
    params = ", ".join(f"{k}={v}" for k, v in info.rule_params.items())
    t.add_row("default rule", info.default_rule + (f" ({params})" if params else ""))
    if info.rule_note:
        t.add_row("why this rule", info.rule_note)
    t.add_row("label kind", ", ".join(f"{k} ({n})" for k, n in sorted(s.label_kinds.items())))
    if s.n_cmb > 0:
        from cmbbench.scoring.power import detectable_delta_f1

        mdd = detectable_delta_f1(counts)
        t.add_row(
            "smallest detectable paired ΔF1",
            f"{mdd:.3f} (bootstrap of a simulated reference pair on these cases: sensitivity "
            "0.7, precision 0.7, 60% agreement per CMB; 2 × SE over 1,000 case resamples)",
        )
    console.print(t)

    for head, counter, fmt in (
        ("cohort / protocol", s.groups, str),
        ("spacing (mm)", s.spacings, lambda v: " × ".join(f"{x:g}" for x in v)),
        ("shape (voxels)", s.shapes, lambda v: " × ".join(str(x) for x in v)),
    ):
        g = Table()
        g.add_column(head)
        g.add_column("cases", justify="right")
        for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            g.add_row(fmt(key), str(n))
        console.print(g)


@data_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    case_id: Annotated[str, typer.Argument(metavar="CASE", help="Case id, e.g. sub-101.")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    root: RootOpt = None,
    preset: PresetOpt = None,
    seed: SeedOpt = 0,
    opt: OptOpt = None,
    max_cmbs: Annotated[int, typer.Option("--max-cmbs", min=1, help="CMBs to show at most.")] = 6,
    crop_mm: Annotated[float, typer.Option("--crop-mm", min=2.0, help="Crop side in mm.")] = 40.0,
    focus: Annotated[
        str,
        typer.Option(
            "--focus", help="cmbs | mimics: centre the crops on CMBs or on one mimic of each kind."
        ),
    ] = "cmbs",
) -> None:
    """Write a PNG montage of axial crops through a case's CMBs, labels outlined (mimics marked)."""
    from cmbbench.datasets.viz import render_case

    try:
        ds = _load(name, root, None, _options(preset, None, seed, opt))
        try:
            case = ds.case(case_id)
        except KeyError as err:
            raise fail(str(err.args[0])) from None
        if focus not in ("cmbs", "mimics"):
            raise fail(f"--focus must be cmbs or mimics, got {focus!r}")
        path = render_case(case, out, max_cmbs=max_cmbs, crop_mm=crop_mm, focus=focus)  # type: ignore[arg-type]
    except CmbbenchError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write {out}: {err.strerror or err}") from None
    console.print(f"wrote {path}", highlight=False)


@data_app.command("generate")
def generate_command(
    name: Annotated[str, typer.Argument(help="Only 'synthetic' can be generated.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the NIfTI tree into.")],
    n: Annotated[
        int | None, typer.Option("--n", min=1, help="Number of subjects (default: preset's).")
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option("--protocol", help="Acquisition protocol (default: the preset's mix)."),
    ] = None,
    preset: Annotated[str, typer.Option("--preset", help="Dataset preset.")] = "default",
    seed: SeedOpt = 0,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default: all cores).")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="Only this split (train, val, test): e.g. the images to submit for."
        ),
    ] = None,
) -> None:
    """Write the synthetic set (or one split of it) as a VALDO-style NIfTI tree with JSON sidecars."""
    if name != "synthetic":
        raise fail(f"only the 'synthetic' dataset can be generated, got {name!r}")
    try:
        from cmbbench.datasets.synthetic import export_tree
    except ImportError as err:
        raise fail(f"the synthetic generator is not available ({err})") from None
    try:
        with _progress() as progress:
            path = export_tree(
                out,
                n=n,
                preset=preset,
                protocol=protocol,
                seed=seed,
                workers=workers,
                progress=progress,
                split=split,
            )
    except CmbbenchError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write {out}: {err.strerror or err}") from None
    console.print(f"wrote {path}", highlight=False)


@data_app.command("export-nnunet")
def export_nnunet_command(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    out: Annotated[Path, typer.Option("--out", help="nnU-Net raw folder (nnUNet_raw).")],
    dataset_id: Annotated[int, typer.Option("--id", min=0, max=999, help="nnU-Net dataset id.")],
    dataset_name: Annotated[
        str | None, typer.Option("--name", help="nnU-Net dataset name (default: cmbbench_<NAME>).")
    ] = None,
    root: RootOpt = None,
    split: Annotated[str | None, typer.Option("--split", help="Export only this split.")] = None,
    preset: PresetOpt = None,
    split_file: SplitFileOpt = None,
    seed: SeedOpt = 0,
    opt: OptOpt = None,
    channel_name: Annotated[str, typer.Option("--channel-name", help="Name of channel 0.")] = "T2S",
) -> None:
    """Write a dataset as an nnU-Net v2 raw folder Dataset<ID>_<name> (labels uint8 0/1)."""
    from cmbbench.datasets.nnunet import export_nnunet

    try:
        ds = _load(name, root, split, _options(preset, split_file, seed, opt))
        with _progress() as progress:
            path = export_nnunet(
                ds,
                out,
                dataset_id=dataset_id,
                name=dataset_name or f"cmbbench_{name}",
                channel_name=channel_name,
                progress=progress,
            )
    except CmbbenchError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write {out}: {err.strerror or err}") from None
    console.print(f"wrote {path}", highlight=False)
