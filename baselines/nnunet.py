"""``nnunet``: the real nnU-Net v2 (``nnunetv2``), planned, preprocessed and trained by itself.

nnU-Net (Isensee et al., Nature Methods 2021) won VALDO 2021 Task 2 (CMB detection) as
MixMicrobleedNet, an nnU-Net v1 ``3d_fullres`` model. This detector runs nnU-Net v2's own
pipeline on the run's data and nothing of cmbbench's network engine:

1. **export** (:func:`cmbbench.datasets.nnunet.export_nnunet`): the training and validation
   cases become the raw dataset ``RUN/nnunet/raw/Dataset501_cmbbench`` (``imagesTr``,
   ``labelsTr``: 0 background, 1 CMB); nnU-Net's split file (``splits_final.json``) holds one
   fold, fold 0, whose training cases are the run's training split and whose validation
   cases are the run's validation split, so nnU-Net never trains on a validation case;
2. **fingerprint, planning, preprocessing**: nnU-Net's Python API
   (:mod:`nnunetv2.experiment_planning.plan_and_preprocess_api`) with its default planner
   (``ExperimentPlanner``), for ``3d_fullres`` only: for its default 8 GB of GPU memory
   (plans ``nnUNetPlans``) under ``full``, for 0.25 GB (``nnUNetPlans_cmbbenchCPU``, a
   smaller patch planned by the same rules) under ``quick`` and ``tiny``;
3. **training**: ``3d_fullres``, fold 0, with a named trainer per recipe preset
   (:data:`BUDGETS`): nnU-Net's standard ``nnUNetTrainer`` (1000 epochs × 250 iterations)
   under ``full``, ``nnUNetTrainer_cmbbenchQuick`` (10 epochs × 20 iterations) under
   ``quick`` and ``nnUNetTrainer_cmbbenchTiny`` (2 × 2) under ``tiny``
   (:mod:`cmbbench_baselines.nnunet_trainers`);
   the trainer class is instantiated directly, exactly as nnU-Net's ``run_training`` does,
   and a run interrupted inside training continues from nnU-Net's own
   ``checkpoint_latest.pth`` when ``fit`` is called again on the same run directory;
4. **prediction**: nnU-Net's ``nnUNetPredictor`` (its preprocessing, Gaussian-weighted
   sliding window, optional mirroring, resampling back to the image grid) gives the class-1
   softmax (X, Y, Z) on the case's own grid; on a CPU whose recipe's ``amp_cpu`` asks for
   bf16 (``quick``: ``"auto"``, bf16 on a CPU where it is the faster) its network runs under bf16
   autocast (:func:`cpu_autocast`), as cmbbench's engine infers, where nnU-Net itself would
   run float32 (it autocasts on CUDA only);
5. **post-processing**: the threshold and minimum component size are tuned on the
   validation split by the engine's own functions
   (:func:`cmbbench.engine.postprocess.postprocess_grid`, :func:`~cmbbench.engine.postprocess.best_grid_point`,
   the recipe's ``pp_thresholds`` / ``pp_min_sizes``, the dataset's evaluator), exactly as for
   every network row, and the engine scores the cleaned map; the uncleaned map goes with it
   (``Prediction.meta["raw"]``) for the full FROC.

All of nnU-Net's folders live inside the run directory (``RUN/nnunet/{raw,preprocessed,
results}``); ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` are set for the
duration of each call (:func:`nnunet_environment`) and restored after. nnU-Net's console
output goes to ``RUN/nnunet/nnunet.log``. ``results_dir=...`` points the detector at an
existing nnU-Net model folder (``.../Dataset###_Name/Trainer__Plans__3d_fullres``) instead of
training: only the post-processing is tuned on the run's validation split.

Importing this module imports neither torch nor nnU-Net; ``pip install cmbbench[nnunet]``
installs nnU-Net.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmbbench import register_model
from cmbbench.cases import Case
from cmbbench.errors import CmbbenchError
from cmbbench.io import write_json_atomic
from cmbbench.models.detector import Prediction

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install cmbbench[nnunet]"
CONFIGURATION = "3d_fullres"
PLANNER = "ExperimentPlanner"
PLANS = "nnUNetPlans"
FOLD = 0
DATASET_ID = 501
DATASET_NAME = "cmbbench"


@dataclass(frozen=True)
class Budget:
    """How nnU-Net is planned and trained under a recipe preset: the trainer class, the GPU
    memory (GB) nnU-Net's planner sizes the ``3d_fullres`` patch for (``None``: its default,
    8 GB) and the plans' name."""

    trainer: str
    gpu_memory_target_gb: float | None
    plans: str


#: per recipe preset (cmbbench's trainers are in cmbbench_baselines.nnunet_trainers). On the
#: quick data (~142×187×50 voxels at 1×1×3 mm) nnU-Net's default plan is a 160×192×56 patch
#: (batch 2) for a 6-stage U-Net, over a minute per iteration on 2 CPU cores; planned for
#: 0.25 GB the same planner gives 56×72×16 on v1.1 and 56×64×16 (batch 2, 4 stages) on v2.0.
BUDGETS: dict[str, Budget] = {
    "full": Budget("nnUNetTrainer", None, PLANS),
    "quick": Budget("nnUNetTrainer_cmbbenchQuick", 0.25, "nnUNetPlans_cmbbenchCPU"),
    "tiny": Budget("nnUNetTrainer_cmbbenchTiny", 0.25, "nnUNetPlans_cmbbenchCPU"),
}
#: nnU-Net's folders, set per call to folders inside the run directory
PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
STATE_FILE = "cmbbench_nnunet.json"  # what was exported/planned/trained, inside RUN/nnunet
LOG_FILE = "nnunet.log"
SHIM_MODULE = "cmbbench_nnunet_trainers"
_READERS_ZYX = ("SimpleITKIO", "NibabelIO")  # readers giving the (Z, Y, X) of the NIfTI array


class NnunetMissingError(CmbbenchError, ImportError):
    """nnU-Net v2 (``nnunetv2``) is not installed."""


class NnunetStageError(CmbbenchError):
    """A stage of nnU-Net's pipeline failed: ``stage``, ``dataset``, nnU-Net's message and,
    when known, its log file (whose last lines are quoted: nnU-Net prints the details of
    some failures, e.g. of its dataset check, before raising)."""

    def __init__(self, stage: str, dataset: str, message: str, log_file: Path | None = None):
        self.stage, self.dataset, self.nnunet_message = stage, dataset, message
        self.log_file = log_file
        text = f"nnU-Net {stage} failed on dataset {dataset}: {message}"
        if log_file is not None:
            tail = _log_tail(log_file)
            text += f"\nnnU-Net's output is in {log_file}" + (", ending:\n" + tail if tail else "")
        super().__init__(text)


def _log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` non-empty lines of ``path`` ('' when unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = [ln.rstrip() for ln in fh if ln.strip()]
    except OSError:
        return ""
    return "\n".join("  " + ln for ln in text[-lines:])


def require_nnunet() -> str:
    """The installed ``nnunetv2`` version; :class:`NnunetMissingError` naming
    ``pip install cmbbench[nnunet]`` when it cannot be imported."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError as err:
        raise NnunetMissingError(
            f"model 'nnunet' needs nnU-Net v2 (the package nnunetv2), which cannot be imported "
            f"({err}); install it with: {INSTALL_HINT}"
        ) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- folders
@dataclass(frozen=True)
class NnunetFolders:
    """nnU-Net's folders under ``root`` (``RUN/nnunet``) for the dataset ``dataset``
    (``Dataset###_Name``)."""

    root: Path
    dataset: str

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def trainers(self) -> Path:
        """The folder named by ``$nnUNet_extTrainer`` (the trainer shim module)."""
        return self.root / "trainers"

    @property
    def raw_dataset(self) -> Path:
        return self.raw / self.dataset

    @property
    def preprocessed_dataset(self) -> Path:
        return self.preprocessed / self.dataset

    def model_dir(self, trainer: str, plans: str = PLANS) -> Path:
        """nnU-Net's training output folder of ``trainer`` with ``plans`` (``3d_fullres``)."""
        return self.results / self.dataset / f"{trainer}__{plans}__{CONFIGURATION}"


@contextlib.contextmanager
def environment_variables(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (``None``: unset) the environment variables ``values`` for the ``with`` block and
    restore every one of them (set or unset) afterwards, also on error."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def nnunet_environment(
    folders: NnunetFolders, extra: Mapping[str, str | None] | None = None
) -> Iterator[NnunetFolders]:
    """``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` pointing into
    ``folders.root`` and ``nnUNet_extTrainer`` at its trainer shim (plus ``extra``) for the
    ``with`` block, restored afterwards, and so is torch's intra-op thread count (nnU-Net's
    planner changes it); nnU-Net's console output is appended to ``folders.root / LOG_FILE``
    meanwhile."""
    import torch

    threads = torch.get_num_threads()
    values: dict[str, str | None] = {
        "nnUNet_raw": str(folders.raw),
        "nnUNet_preprocessed": str(folders.preprocessed),
        "nnUNet_results": str(folders.results),
        "nnUNet_extTrainer": str(folders.trainers),
        **dict(extra or {}),
    }
    with contextlib.suppress(OSError):
        folders.root.mkdir(parents=True, exist_ok=True)
    with environment_variables(values), stdout_to(folders.root / LOG_FILE):
        try:
            yield folders
        finally:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Append everything written to standard output inside the block to ``path``: Python's
    ``sys.stdout`` and file descriptor 1, which the worker processes nnU-Net spawns inherit
    (they print the details of its dataset check); both are restored afterwards. Where
    ``path`` cannot be written (a read-only run folder) the output is discarded."""
    sys.stdout.flush()
    try:
        out = open(path, "a", encoding="utf-8", buffering=1)  # lines in order with children
    except OSError:
        out = open(os.devnull, "w", encoding="utf-8")
    with out:
        saved = os.dup(1)
        try:
            os.dup2(out.fileno(), 1)
            with contextlib.redirect_stdout(out):
                yield
        finally:
            with contextlib.suppress(Exception):
                out.flush()
            os.dup2(saved, 1)
            os.close(saved)


def write_trainer_shim(folder: Path) -> Path:
    """Write ``folder/cmbbench_nnunet_trainers.py``, which re-exports cmbbench's trainers so
    that nnU-Net's own trainer search (``$nnUNet_extTrainer``) finds them, e.g. in
    ``nnUNetPredictor.initialize_from_trained_model_folder`` or ``nnUNetv2_predict``."""
    from cmbbench_baselines.nnunet_trainers import TRAINERS

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SHIM_MODULE}.py"
    names = ", ".join(sorted(TRAINERS))
    text = (
        '"""Written by cmbbench: its nnU-Net trainers, for nnU-Net\'s $nnUNet_extTrainer search."""\n\n'
        f"from cmbbench_baselines.nnunet_trainers import {names}  # noqa: F401\n"
    )
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- stages
def _stage(
    stage: str, dataset: str, log_file: Path | None = None
) -> contextlib.AbstractContextManager[None]:
    """Re-raise any error of nnU-Net inside the block as :class:`NnunetStageError` (naming
    ``log_file``, where nnU-Net's output goes)."""

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except CmbbenchError:
            raise
        except Exception as err:
            msg = f"{type(err).__name__}: {err}".strip()
            with contextlib.suppress(Exception):
                sys.stdout.flush()  # the log file, inside nnunet_environment
            raise NnunetStageError(stage, dataset, msg, log_file) from err

    return guard()


def plan_and_preprocess(
    dataset_id: int,
    dataset: str,
    *,
    plans: str = PLANS,
    gpu_memory_target_gb: float | None = None,
    num_processes: int = 1,
    log_file: Path | None = None,
) -> dict:
    """nnU-Net's dataset check, fingerprint, ``ExperimentPlanner`` planning (for
    ``gpu_memory_target_gb`` of GPU memory, ``None``: nnU-Net's default; plans named ``plans``)
    and ``3d_fullres`` preprocessing of raw dataset ``dataset_id`` (``$nnUNet_raw`` and
    ``$nnUNet_preprocessed`` must be set); ``num_processes`` worker processes. Returns the
    plans (dict). A failure raises :class:`NnunetStageError` naming the stage, the dataset
    and nnU-Net's message."""
    from nnunetv2.experiment_planning import plan_and_preprocess_api as api

    with _stage("dataset check and fingerprint extraction", dataset, log_file):
        api.extract_fingerprints(
            [dataset_id],
            num_processes=num_processes,
            check_dataset_integrity=True,
            clean=True,
            verbose=False,
            show_progress_bar=False,
        )
    with _stage("experiment planning", dataset, log_file):
        plans_id = api.plan_experiments(
            [dataset_id],
            PLANNER,
            gpu_memory_target_in_gb=gpu_memory_target_gb,
            overwrite_plans_name=None if plans == PLANS else plans,
        )
    with _stage("preprocessing", dataset, log_file):
        api.preprocess(
            [dataset_id],
            plans_id,
            configurations=(CONFIGURATION,),
            num_processes=(num_processes,),
            verbose=False,
            show_progress_bar=False,
        )
    plans_path = Path(os.environ["nnUNet_preprocessed"]) / dataset / f"{plans_id}.json"
    return json.loads(plans_path.read_text(encoding="utf-8"))


def write_split(folders: NnunetFolders, train_ids: Sequence[str], val_ids: Sequence[str]) -> Path:
    """nnU-Net's ``splits_final.json`` with one fold (fold 0): the run's training cases train,
    its validation cases validate."""
    path = folders.preprocessed_dataset / "splits_final.json"
    write_json_atomic(path, [{"train": list(train_ids), "val": list(val_ids)}])
    return path


@dataclass(frozen=True)
class TrainingOutcome:
    """What :func:`train_fold` did: the budget the trainer ran (epochs × iterations, the
    plans' patch size in voxels and target spacing in mm, both in nnU-Net's axis order: the
    reader's (Z, Y, X) permuted by ``transpose_forward``; batch size), the epoch it resumed
    from (``None``: a fresh start; the final epoch count when it was already trained) and
    its seconds."""

    trainer: str
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    patch_size: list[int]
    batch_size: int
    spacing: list[float]
    transpose_forward: list[int]
    resumed_from_epoch: int | None
    already_trained: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_fold(
    folders: NnunetFolders,
    trainer_name: str,
    device: Any,
    *,
    plans_name: str = PLANS,
    seed: int = 0,
) -> TrainingOutcome:
    """Train ``3d_fullres`` fold 0 of the plans ``plans_name`` with the trainer class
    ``trainer_name``, instantiated the way
    nnU-Net's ``run_training`` does (plans, dataset.json, configuration, fold, device), and
    continued from ``checkpoint_latest.pth`` when an earlier call was interrupted; skipped
    when ``checkpoint_final.pth`` exists. nnU-Net's final validation is not run (the run's
    own validation split tunes the post-processing)."""
    import torch
    from cmbbench_baselines.nnunet_trainers import find_trainer
    from nnunetv2.run.run_training import maybe_load_checkpoint

    t0 = time.perf_counter()
    log_file = folders.root / LOG_FILE
    with _stage("trainer lookup", folders.dataset, log_file):
        trainer_cls = find_trainer(trainer_name)
    plans = json.loads((folders.preprocessed_dataset / f"{plans_name}.json").read_text("utf-8"))
    dataset_json = json.loads((folders.preprocessed_dataset / "dataset.json").read_text("utf-8"))
    out = folders.model_dir(trainer_name, plans_name) / f"fold_{FOLD}"
    final, latest = out / "checkpoint_final.pth", out / "checkpoint_latest.pth"
    resume = not final.is_file() and latest.is_file()
    plans["continue_training"] = resume
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    with _stage("trainer setup", folders.dataset, log_file):
        trainer = trainer_cls(
            plans=plans,
            configuration=CONFIGURATION,
            fold=FOLD,
            dataset_json=dataset_json,
            device=torch.device(device),
        )
    config = plans["configurations"][CONFIGURATION]
    resumed_from: int | None = None
    already = final.is_file()
    if already:
        # nnU-Net's own checkpoint, written by this run's trainer: its logging holds numpy
        # scalars, which weights_only=True refuses; nnU-Net loads it the same way
        resumed_from = int(
            torch.load(final, map_location="cpu", weights_only=False)["current_epoch"]
        )
    else:
        if resume:
            with _stage("checkpoint loading", folders.dataset, log_file):
                maybe_load_checkpoint(trainer, True, False, None)
            resumed_from = int(trainer.current_epoch)
            log.info("nnunet: resuming nnU-Net training at epoch %d (%s)", resumed_from, latest)
        with _stage("training", folders.dataset, log_file):
            trainer.run_training()
    return TrainingOutcome(
        trainer=trainer_name,
        epochs=int(trainer.num_epochs),
        iterations_per_epoch=int(trainer.num_iterations_per_epoch),
        val_iterations_per_epoch=int(trainer.num_val_iterations_per_epoch),
        patch_size=[int(v) for v in config["patch_size"]],
        batch_size=int(config["batch_size"]),
        spacing=[float(v) for v in config["spacing"]],
        transpose_forward=[int(v) for v in plans.get("transpose_forward", [0, 1, 2])],
        resumed_from_epoch=resumed_from,
        already_trained=already,
        seconds=time.perf_counter() - t0,
    )


# ----------------------------------------------------------------------------- prediction
def check_results_dir(
    path: str | os.PathLike[str], checkpoint: str = "checkpoint_final.pth"
) -> tuple[Path, list[int | str]]:
    """A trained nnU-Net model folder (``plans.json``, ``dataset.json``,
    ``fold_*/<checkpoint>``) and its folds (every one holding ``checkpoint``; nnU-Net's
    predictor ensembles them); a :class:`CmbbenchError` saying what is missing (and which
    model folders lie below a folder given one level too high)."""
    p = Path(path).expanduser()
    layout = (
        "expected nnU-Net's training output folder, e.g. "
        "nnUNet_results/Dataset501_CMB/nnUNetTrainer__nnUNetPlans__3d_fullres, holding "
        f"plans.json, dataset.json and fold_<k>/{checkpoint}"
    )
    if not p.is_dir():
        raise CmbbenchError(f"nnunet results_dir {p} is not a folder ({layout})")
    missing = [n for n in ("plans.json", "dataset.json") if not (p / n).is_file()]
    if missing:
        below = sorted(str(q.parent.relative_to(p)) for q in p.glob("*/plans.json"))
        below += sorted(str(q.parent.relative_to(p)) for q in p.glob("*/*/plans.json"))
        hint = f"; model folders below it: {', '.join(below)}" if below else ""
        raise CmbbenchError(
            f"nnunet results_dir {p} lacks {' and '.join(missing)} ({layout}){hint}"
        )
    folds: list[int | str] = []
    for q in sorted(p.glob("fold_*")):
        if (q / checkpoint).is_file():
            tail = q.name[len("fold_") :]
            folds.append(int(tail) if tail.isdigit() else tail)
    if not folds:
        raise CmbbenchError(
            f"nnunet results_dir {p} has no fold_<k>/{checkpoint} (training not "
            f"finished?) ({layout})"
        )
    spec = json.loads((p / "dataset.json").read_text(encoding="utf-8"))
    channels = spec.get("channel_names", spec.get("modality", {}))
    if len(channels) != 1:
        raise CmbbenchError(
            f"nnunet results_dir {p}: the model takes {len(channels)} input channels "
            f"({channels}); cmbbench's nnunet detector feeds it the main image only (1 channel)"
        )
    return p, folds


def load_predictor(
    model_dir: Path,
    folds: Sequence[int | str],
    device: Any,
    *,
    checkpoint: str = "checkpoint_final.pth",
    use_mirroring: bool = True,
    tile_step_size: float = 0.5,
) -> Any:
    """nnU-Net's ``nnUNetPredictor`` initialised from ``model_dir`` by nnU-Net itself
    (``initialize_from_trained_model_folder``; ``$nnUNet_extTrainer`` must name the trainer
    shim for cmbbench's trainers). Gaussian-weighted sliding window with ``tile_step_size``
    (fraction of the patch), mirroring at test time when ``use_mirroring``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    dev = torch.device(device)
    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=dev.type == "cuda",
        device=dev,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_dir), tuple(folds), checkpoint)
    reader = predictor.plans_manager.plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in _READERS_ZYX:
        raise CmbbenchError(
            f"nnunet: the model at {model_dir} reads its images with {reader}; cmbbench passes "
            f"images the way {' or '.join(_READERS_ZYX)} read them (array axes reversed), so "
            "its predictions would not be on the right grid"
        )
    return predictor


def predict_probability(
    predictor: Any,
    image: np.ndarray,
    spacing: Sequence[float],
    *,
    cpu_autocast: str | None = None,
) -> np.ndarray:
    """Class-1 (CMB) softmax of nnU-Net's ``predictor`` for ``image`` (X, Y, Z) with voxel
    ``spacing`` (mm, per axis): float32 (X, Y, Z) on the image's own grid. The image is given
    to nnU-Net as its NIfTI readers give the exported file ((1, Z, Y, X), spacing reversed).

    ``cpu_autocast="bfloat16"`` runs the network of a CPU predictor under bf16 autocast
    (nnU-Net's predictor autocasts on CUDA only, to float16; on CPU it runs float32);
    the sliding-window accumulation, softmax and export stay nnU-Net's, in float32."""
    import torch

    data = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 1, 0)[None])
    props = {"spacing": [float(s) for s in tuple(spacing)[::-1]]}
    if cpu_autocast not in (None, "bfloat16"):
        raise CmbbenchError(
            f"nnunet: cpu_autocast must be None or 'bfloat16', got {cpu_autocast!r}"
        )
    amp = cpu_autocast is not None and torch.device(predictor.device).type == "cpu"
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp),
    ):
        _, probs = predictor.predict_single_npy_array(data, props, None, None, True)
    prob = np.asarray(probs[1], np.float32).transpose(2, 1, 0)
    return np.ascontiguousarray(prob)


def cpu_autocast(device: str, recipe: Mapping[str, Any]) -> str | None:
    """``"bfloat16"`` when nnU-Net's predictor runs on a CPU and the recipe's ``amp_cpu``
    asks for bf16 (``"on"``, or ``"auto"`` on a CPU where bf16 is the faster: the engine's own rule,
    :func:`cmbbench.engine.trainer.autocast_dtype`), else ``None`` (float32). Training is
    nnU-Net's own and stays float32 on CPU."""
    import torch

    from cmbbench.engine.recipe import Recipe
    from cmbbench.engine.trainer import autocast_dtype

    dev = torch.device(device)
    if dev.type != "cpu":
        return None
    amp = str(recipe.get("amp_cpu", Recipe().amp_cpu))
    return "bfloat16" if autocast_dtype(Recipe(amp_cpu=amp), dev) is not None else None  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- detector
class NnunetDetector:
    """nnU-Net v2 ``3d_fullres`` as a cmbbench detector (see the module docstring).

    ``trainer``: a trainer class name (cmbbench's or any of nnU-Net's); default the recipe
    preset's (:data:`BUDGETS`). ``gpu_memory_target_gb``: the memory nnU-Net's planner sizes
    the patch for (default the preset's). ``results_dir``: an existing nnU-Net model folder
    to predict with instead of training. ``use_mirroring``: nnU-Net's test-time mirroring
    (default: on for ``full``, off for ``quick``/``tiny``, where it would multiply the CPU
    inference time by eight). ``tile_step_size``: sliding-window step, a fraction of the
    patch (default: nnU-Net's 0.5 for ``full``; 1.0, windows that do not overlap, for
    ``quick``/``tiny``: about 4× fewer windows on CPU). On a CPU the predictor's network
    runs under bf16 autocast when the recipe's ``amp_cpu`` says so (:func:`cpu_autocast`;
    ``--set amp_cpu=off`` for float32). ``num_processes``: nnU-Net's
    preprocessing workers. ``dataset_id``: the nnU-Net dataset id of the export.
    ``checkpoint``: the checkpoint file predicted with.
    """

    def __init__(
        self,
        trainer: str | None = None,
        results_dir: str | os.PathLike[str] | None = None,
        use_mirroring: bool | None = None,
        tile_step_size: float | None = None,
        num_processes: int = 1,
        dataset_id: int = DATASET_ID,
        checkpoint: str = "checkpoint_final.pth",
        gpu_memory_target_gb: float | None = None,
    ):
        if gpu_memory_target_gb is not None and not float(gpu_memory_target_gb) > 0:
            raise CmbbenchError(
                f"nnunet: gpu_memory_target_gb must be > 0, got {gpu_memory_target_gb}"
            )
        self.gpu_memory_target_gb = gpu_memory_target_gb
        if tile_step_size is not None and not 0.0 < float(tile_step_size) <= 1.0:
            raise CmbbenchError(f"nnunet: tile_step_size must be in (0, 1], got {tile_step_size}")
        if int(num_processes) < 1:
            raise CmbbenchError(f"nnunet: num_processes must be >= 1, got {num_processes}")
        self.trainer = trainer
        self.checkpoint = checkpoint
        self.results_dir = None if results_dir is None else str(results_dir)
        if self.results_dir is not None:  # a wrong folder fails before any data is read
            check_results_dir(self.results_dir, checkpoint)
        self.use_mirroring = use_mirroring
        self.tile_step_size = None if tile_step_size is None else float(tile_step_size)
        self.num_processes = int(num_processes)
        self.dataset_id = int(dataset_id)
        self.fitted: dict[str, Any] = {}
        self._predictor: Any = None
        self._pp: Any = None  # cmbbench.engine.postprocess.PostprocessParams

    # -------------------------------------------------------------- fit
    def fit(self, train: Sequence[Case], val: Sequence[Case], config: Mapping[str, Any]) -> None:
        """Export, plan, preprocess and train (or take ``results_dir``), then tune the
        post-processing on ``val`` with the engine's grid and the dataset's evaluator."""
        version = require_nnunet()
        device = str(config.get("device", "cpu"))
        preset = str(config.get("preset") or ("full" if device.startswith("cuda") else "quick"))
        recipe = dict(config.get("recipe") or {})
        full = preset == "full"
        mirroring = self.use_mirroring if self.use_mirroring is not None else full
        step = self.tile_step_size if self.tile_step_size is not None else (0.5 if full else 1.0)
        fitted: dict[str, Any] = {
            "nnunetv2_version": version,
            "configuration": CONFIGURATION,
            "planner": PLANNER,
            "fold": FOLD,
            "preset": preset,
            "use_mirroring": bool(mirroring),
            "tile_step_size": step,
            "checkpoint": self.checkpoint,
            "cpu_autocast": cpu_autocast(device, recipe),
        }
        timings: dict[str, float] = {}
        if self.results_dir is not None:
            model_dir, folds = check_results_dir(self.results_dir, self.checkpoint)
            fitted.update({"source": "results_dir", "model_dir": str(model_dir.resolve())})
            fitted["folds"] = folds
            shim_root = Path(config.get("out_dir", ".")) / "nnunet"
        else:
            budget = self.budget(preset)
            if "out_dir" not in config:
                raise CmbbenchError("nnunet: config['out_dir'] (the run directory) is required")
            folders = NnunetFolders(
                Path(config["out_dir"]).resolve() / "nnunet",
                f"Dataset{self.dataset_id:03d}_{DATASET_NAME}",
            )
            outcome = self._train(folders, budget, train, val, device, config, timings)
            model_dir, folds = folders.model_dir(budget.trainer, budget.plans), [FOLD]
            shim_root = folders.root
            fitted.update(
                {"source": "trained", "dataset": folders.dataset, "model_dir": str(model_dir)}
            )
            fitted["plans"] = budget.plans
            fitted["gpu_memory_target_gb"] = budget.gpu_memory_target_gb
            fitted["folds"] = folds
            fitted["training"] = outcome.to_dict()
        fitted["shim_dir"] = str((Path(shim_root) / "trainers").resolve())
        self.fitted = fitted
        t0 = time.perf_counter()
        self._predictor = self._open_predictor(device)
        timings["load_predictor_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._pp, grid = self._tune(val, recipe, config.get("evaluator"))
        timings["val_predict_and_tune_seconds"] = time.perf_counter() - t0
        fitted["postprocess"] = {**self._pp.to_dict(), "tuned_on": "val", **grid}
        fitted["seconds"] = timings
        fitted["device"] = device

    def budget(self, preset: str) -> Budget:
        """The preset's :class:`Budget`, with this detector's ``trainer`` and
        ``gpu_memory_target_gb`` when given."""
        if preset not in BUDGETS:
            raise CmbbenchError(
                f"nnunet: no budget for recipe preset {preset!r} (known: {', '.join(BUDGETS)})"
            )
        b = BUDGETS[preset]
        memory = b.gpu_memory_target_gb
        if self.gpu_memory_target_gb is not None:
            memory = float(self.gpu_memory_target_gb)
        plans = b.plans if memory == b.gpu_memory_target_gb else f"nnUNetPlans_{memory:g}GB"
        return Budget(self.trainer or b.trainer, memory, plans)

    def _train(
        self,
        folders: NnunetFolders,
        budget: Budget,
        train: Sequence[Case],
        val: Sequence[Case],
        device: str,
        config: Mapping[str, Any],
        timings: dict[str, float],
    ) -> TrainingOutcome:
        """Export (once), plan and preprocess (once), write the split and train; the run
        folder's state file refuses a second fit on other cases or with another trainer."""
        from cmbbench.datasets.nnunet import export_nnunet

        train_ids = [c.case_id for c in train]
        val_ids = [c.case_id for c in val]
        if not train_ids or not val_ids:
            raise CmbbenchError("nnunet needs training and validation cases")
        if set(train_ids) & set(val_ids):
            raise CmbbenchError("nnunet: a case is in both the training and validation split")
        state_path = folders.root / STATE_FILE
        want = {
            "dataset": folders.dataset,
            "train": train_ids,
            "val": val_ids,
            "trainer": budget.trainer,
            "plans": budget.plans,
        }
        state: dict[str, Any] = {}
        if state_path.is_file():
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if {k: state.get(k) for k in want} != want:
                raise CmbbenchError(
                    f"nnunet: {folders.root} holds an nnU-Net run on other cases or with another "
                    f"trainer or plans ({state.get('trainer')}, {state.get('plans')}); choose "
                    "another run directory (--out)"
                )
        else:
            state = dict(want)
        write_trainer_shim(folders.trainers)
        with nnunet_environment(folders):
            if not state.get("exported"):
                t0 = time.perf_counter()
                export_nnunet(
                    [*train, *val], folders.raw, dataset_id=self.dataset_id, name=DATASET_NAME
                )
                state["exported"] = True
                write_json_atomic(state_path, state)
                timings["export_seconds"] = time.perf_counter() - t0
            if not state.get("preprocessed"):
                t0 = time.perf_counter()
                plan_and_preprocess(
                    self.dataset_id,
                    folders.dataset,
                    plans=budget.plans,
                    gpu_memory_target_gb=budget.gpu_memory_target_gb,
                    num_processes=self.num_processes,
                    log_file=folders.root / LOG_FILE,
                )
                state["preprocessed"] = True
                write_json_atomic(state_path, state)
                timings["plan_and_preprocess_seconds"] = time.perf_counter() - t0
            write_split(folders, train_ids, val_ids)
        # CPU: nnU-Net's data augmentation in the main process (no worker processes)
        n_proc_da = os.environ.get("nnUNet_n_proc_DA") or ("0" if device == "cpu" else None)
        with nnunet_environment(folders, {"nnUNet_n_proc_DA": n_proc_da}):
            outcome = train_fold(
                folders,
                budget.trainer,
                device,
                plans_name=budget.plans,
                seed=int(config.get("seed", 0)),
            )
        timings["train_seconds"] = outcome.seconds
        state["trained"] = True
        write_json_atomic(state_path, state)
        return outcome

    def _open_predictor(self, device: str) -> Any:
        """nnU-Net's predictor for the fitted model folder, found by nnU-Net's own lookup."""
        f = self.fitted
        root = Path(f["shim_dir"]).parent
        write_trainer_shim(Path(f["shim_dir"]))
        folders = NnunetFolders(root, f.get("dataset", "-"))
        with (
            nnunet_environment(folders, {"nnUNet_extTrainer": f["shim_dir"]}),
            _stage("predictor loading", str(f["model_dir"])),
        ):
            return load_predictor(
                Path(f["model_dir"]),
                f["folds"],
                device,
                checkpoint=f["checkpoint"],
                use_mirroring=bool(f["use_mirroring"]),
                tile_step_size=float(f["tile_step_size"]),
            )

    def _tune(
        self, val: Sequence[Case], recipe: Mapping[str, Any], evaluator: Any
    ) -> tuple[Any, dict[str, Any]]:
        """The engine's post-processing search on the validation maps: ``(params, record)``."""
        from cmbbench.engine.postprocess import (
            PostprocessParams,
            best_grid_point,
            postprocess_grid,
        )
        from cmbbench.engine.recipe import Recipe

        base = Recipe()
        thresholds = tuple(recipe.get("pp_thresholds") or base.pp_thresholds)
        min_sizes = tuple(recipe.get("pp_min_sizes") or base.pp_min_sizes)
        probs = []
        for case in val:
            probs.append(self.probability(case))
            case.release()
        grid = postprocess_grid(probs, list(val), thresholds, min_sizes, evaluator)
        best = best_grid_point(grid)
        params = PostprocessParams(threshold=best.threshold, min_size=best.min_size)
        record = {
            "val_f1": best.f1,
            "val_counts": {"tp": best.tp, "fp": best.fp, "fn": best.fn},
            "grid": [g.to_dict() for g in grid],
        }
        return params, record

    # -------------------------------------------------------------- predict
    def probability(self, case: Case) -> np.ndarray:
        """nnU-Net's class-1 softmax for ``case``: float32 (X, Y, Z) on the case's grid."""
        if self._predictor is None:
            raise CmbbenchError("nnunet: predict() before fit() (or load_config())")
        f = self.fitted
        folders = NnunetFolders(Path(f["shim_dir"]).parent, f.get("dataset", "-"))
        with (
            nnunet_environment(folders, {"nnUNet_extTrainer": f["shim_dir"]}),
            _stage("prediction", f"{f['model_dir']} (case {case.case_id})"),
        ):
            prob = predict_probability(
                self._predictor, case.image, case.spacing, cpu_autocast=f.get("cpu_autocast")
            )
        if prob.shape != tuple(case.shape):
            raise CmbbenchError(
                f"nnunet: prediction of case {case.case_id} has shape {prob.shape}, "
                f"image {tuple(case.shape)}"
            )
        return prob

    def predict(self, case: Case) -> Prediction:
        """The tuned post-processing applied to nnU-Net's probability map (X, Y, Z); the map
        before it is ``meta["raw"]`` (every candidate, for the full FROC)."""
        from cmbbench.engine.postprocess import clean_probability

        prob = self.probability(case)
        pp = self._pp
        cleaned = clean_probability(prob, pp.threshold, pp.min_size, pp.connectivity)
        return Prediction(prob=cleaned, meta={"threshold": pp.threshold, "raw": prob})

    # -------------------------------------------------------------- state
    def config(self) -> dict[str, Any]:
        """The fitted state (JSON-able): trainer budget, plans, folders, post-processing."""
        return json.loads(json.dumps(self.fitted))

    def load_config(self, fitted: Mapping[str, Any]) -> None:
        """Take :meth:`config` back (``cmbbench predict``): reopen nnU-Net's predictor."""
        from cmbbench.engine.postprocess import PostprocessParams

        require_nnunet()
        self.fitted = dict(fitted)
        pp = dict(fitted["postprocess"])
        self._pp = PostprocessParams(
            threshold=float(pp["threshold"]),
            min_size=int(pp["min_size"]),
            connectivity=int(pp.get("connectivity", 26)),  # type: ignore[arg-type]
        )
        self._predictor = self._open_predictor(str(fitted.get("device", "cpu")))


@register_model(
    "nnunet",
    description="nnU-Net v2 3d_fullres: its own planning, preprocessing, trainer and predictor",
    kind="detector",
)
def nnunet(
    trainer: str | None = None,
    results_dir: str | None = None,
    use_mirroring: bool | None = None,
    tile_step_size: float | None = None,
    num_processes: int = 1,
    dataset_id: int = DATASET_ID,
    checkpoint: str = "checkpoint_final.pth",
    gpu_memory_target_gb: float | None = None,
) -> NnunetDetector:
    return NnunetDetector(
        trainer=trainer,
        results_dir=results_dir,
        use_mirroring=use_mirroring,
        tile_step_size=tile_step_size,
        num_processes=num_processes,
        dataset_id=dataset_id,
        checkpoint=checkpoint,
        gpu_memory_target_gb=gpu_memory_target_gb,
    )
