"""The shared training loop: every network in cmbbench is trained by :func:`train`.

- deterministic: the batches of step ``s`` are a pure function of ``(seed, s)`` (see
  :mod:`cmbbench.engine.patches`), the learning rate a pure function of ``s``;
- mixed precision on CUDA (``recipe.amp``), plain float32 on CPU;
- validation by lesion-level F1 on the validation split every ``val_every`` steps (a
  callback supplied by the caller, see :mod:`cmbbench.engine.evaluate`), best-checkpoint
  selection on that F1;
- checkpoints (model, optimizer, grad scaler, torch RNG, step, best metric, loss history)
  every ``checkpoint_every`` steps and at the end; ``resume=True`` continues from the last
  one, so an interrupted run loses at most one checkpoint interval and, on CPU with the
  same seed, ends with exactly the weights and metrics of an uninterrupted run;
- DDP under torchrun (rank 0 writes checkpoints; every rank loads them);
- training logs (rank 0): a per-step and a per-validation CSV, TensorBoard event files when
  it is installed, and a plot of the curves (:mod:`cmbbench.engine.training_log`); they only
  read values the loop already has, so they change no number.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmbbench.engine.checkpoint import load_checkpoint, save_checkpoint
from cmbbench.engine.distributed import (
    DistContext,
    barrier,
    unwrap_model,
    wrap_model,
)
from cmbbench.engine.environment import peak_memory_bytes, prime_vector_math
from cmbbench.engine.layout import channels_last_input, to_channels_last
from cmbbench.engine.losses import CmbLoss
from cmbbench.engine.patches import PatchSampler, make_loader
from cmbbench.engine.recipe import Recipe
from cmbbench.engine.training_log import TrainingLog
from cmbbench.errors import CmbbenchError
from cmbbench.progress import PhaseTracker, ProgressFn

logger = logging.getLogger(__name__)

#: ``validate(model) -> {"f1": ..., ...}``: the trainer's validation callback
#: (:class:`cmbbench.engine.validation.Validator` is the engine's)
ValidateFn = Callable[[nn.Module], dict[str, float]]

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class TrainResult:
    """What a training run produced. Times in seconds, memory in bytes."""

    steps: int
    start_step: int
    best_step: int | None
    best_metric: float | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    losses: list[float] = field(default_factory=list)  # one per step, from step 0
    skipped_steps: list[int] = field(default_factory=list)  # non-finite loss/gradients
    #: bfloat16 steps with non-finite gradients that were redone in float32 on the same batch
    fp32_retried_steps: list[int] = field(default_factory=list)
    validations: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # this process, optimisation steps only
    val_seconds: float = 0.0
    seconds_per_step: float | None = None
    peak_memory_bytes: int | None = None  # CUDA: max allocated; CPU: peak RSS of the process
    device: str = "cpu"
    amp_dtype: str | None = None  # "float16" / "bfloat16" when mixed precision was used
    #: the training logs by run-record ``artifacts`` key (rank 0; ``None``: not written)
    log_files: dict[str, Path | None] = field(default_factory=dict)


#: a run whose last this-many steps all had non-finite loss or gradients has diverged
MAX_CONSECUTIVE_SKIPS = 20


def _gradients_finite(model: nn.Module) -> bool:
    """True when every gradient of ``model`` is finite (no inf/NaN); one sync per step."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def lr_at(recipe: Recipe, step: int) -> float:
    """Learning rate at ``step`` (linear warm-up, then constant or cosine to 0.01 × lr)."""
    base = recipe.lr
    if recipe.warmup_steps and step < recipe.warmup_steps:
        return base * (step + 1) / recipe.warmup_steps
    if recipe.lr_schedule == "cosine":
        span = max(1, recipe.steps - recipe.warmup_steps)
        t = min(1.0, (step - recipe.warmup_steps) / span)
        return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
    return base


def bf16_is_faster(vendor: str, flags: set[str]) -> bool:
    """Whether bfloat16 autocast makes a CPU's 3-D convolutions faster than float32, from
    its ``/proc/cpuinfo`` ``vendor_id`` and ``flags``: yes with AMX (``amx_bf16``), and on
    AMD with ``avx512_bf16`` (Zen 4 and later, whose bf16 dot products do twice the
    multiply-adds of a float32 FMA per instruction: on a 2-core EPYC one quick-preset scan
    through nnU-Net's network took 5.8 s in bf16 against 13.4 s in float32). No on an Intel CPU with ``avx512_bf16`` but not AMX (Cooper Lake;
    Sapphire/Emerald Rapids guests whose hypervisor hides AMX): measured on a 2-core Emerald
    Rapids guest, oneDNN's bf16 convolution ran at half its float32 throughput (3×3×3,
    64 → 64 channels on 8 × 24×24×16, channels-last: 139 against 261 GFLOP/s). Without
    ``avx512_bf16`` or AMX, no."""
    if "amx_bf16" in flags:
        return True
    return vendor == "AuthenticAMD" and "avx512_bf16" in flags


def cpu_prefers_bf16() -> bool:
    """:func:`bf16_is_faster` for this machine (Linux ``/proc/cpuinfo``; ``False`` where it
    cannot be read, e.g. macOS or Windows)."""
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        return False
    return bf16_is_faster(vendor, flags)


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``: float16 on CUDA when ``recipe.amp``; bfloat16
    on CPU when ``recipe.amp_cpu`` is ``"on"``, or ``"auto"`` on a CPU where bf16 is the faster
    (:func:`cpu_prefers_bf16`);
    ``None`` for plain float32."""
    if device.type == "cuda":
        return torch.float16 if recipe.amp else None
    if device.type == "cpu":
        if recipe.amp_cpu == "on" or (recipe.amp_cpu == "auto" and cpu_prefers_bf16()):
            return torch.bfloat16
    return None


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """Adam with L2 weight decay (the seed), AdamW, or SGD with momentum 0.9, run by PyTorch's
    default implementation or its ``foreach`` / ``fused`` one (``recipe.optimizer_impl``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    impl: dict[str, bool] = {}
    if recipe.optimizer_impl != "auto":
        impl[recipe.optimizer_impl] = True
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **impl)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **impl)
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=recipe.weight_decay,
        **impl,
    )


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # fewer GPUs now than when saved
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class _History:
    """What a (possibly resumed) training has done so far; saved in ``last.pt``."""

    start: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    losses: list[float] = field(default_factory=list)  # one per step, from step 0
    skipped: list[int] = field(default_factory=list)  # steps whose update was skipped
    retried: list[int] = field(default_factory=list)  # bf16 steps redone in float32
    validations: list[dict[str, float]] = field(default_factory=list)


def _resume(
    last_path: Path, model: nn.Module, optimizer: Any, scaler: Any, device: torch.device
) -> _History:
    """Model, optimizer, grad-scaler and RNG state, and the history, from ``last.pt``."""
    state = load_checkpoint(last_path, map_location=device)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CmbbenchError(
            f"checkpoint {last_path} does not fit this model/recipe ({err})"
        ) from None
    if "scaler" in state and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    start = int(state["step"])
    history = _History(
        start=start,
        best_metric=state.get("best_metric"),
        best_step=state.get("best_step"),
        losses=[float(v) for v in state.get("losses", [])][:start],
        skipped=[int(v) for v in state.get("skipped_steps", []) if int(v) < start],
        retried=[int(v) for v in state.get("fp32_retried_steps", []) if int(v) < start],
        validations=[dict(v) for v in state.get("validations", [])],
    )
    _set_rng_state(state.get("rng", {}))
    logger.info("resumed from %s at step %d", last_path, start)
    return history


def _batch_loss(
    train_model: nn.Module,
    criterion: CmbLoss,
    batch: dict[str, Any],
    recipe: Recipe,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """The recipe's loss on one batch (plus deep-supervision terms on ``aux_outputs``)."""
    image = channels_last_input(batch["image"].to(device, non_blocking=True), device)
    target = batch["label"].to(device, non_blocking=True)
    valid = batch["valid"].to(device, non_blocking=True)
    with torch.autocast(
        device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        logits = train_model(image)
    if logits.shape[0] != image.shape[0] or logits.shape[2:] != image.shape[2:]:
        raise CmbbenchError(
            f"model output shape {tuple(logits.shape)} does not match its input "
            f"{tuple(image.shape)} (expected (B, 1 or 2, *spatial))"
        )
    loss = criterion(logits.float(), target, valid)
    if recipe.deep_supervision_weights:
        aux = list(getattr(unwrap_model(train_model), "aux_outputs", None) or [])
        if len(aux) != len(recipe.deep_supervision_weights):
            raise CmbbenchError(
                f"recipe deep_supervision_weights has {len(recipe.deep_supervision_weights)} "
                f"entries but the model left {len(aux)} tensors in model.aux_outputs"
            )
        for w, out in zip(recipe.deep_supervision_weights, aux, strict=True):
            loss = loss + w * criterion(out.float(), target, valid)
    return loss


def _backward(
    train_model: nn.Module, optimizer: Any, scaler: Any, loss: torch.Tensor, recipe: Recipe
) -> bool:
    """Backward (and gradient clipping); whether the step may be applied (finite gradients,
    or the float16 grad scaler, which skips non-finite steps itself)."""
    # backward even when the loss is not finite: under DDP every rank must join the
    # gradient all-reduce; the (then non-finite) gradients make the step a skipped one
    scaler.scale(loss).backward()
    if recipe.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(train_model.parameters(), recipe.grad_clip)
    return bool(scaler.is_enabled() or _gradients_finite(train_model))


def _update(
    optimizer: Any,
    scaler: Any,
    ok: bool,
    *,
    step: int,
    amp_dtype: torch.dtype | None,
    history: _History,
    run_of_skips: int,
) -> int:
    """The optimizer step, or a skipped step when the gradients are not finite (``ok``
    false); returns the number of consecutive skipped steps (an error after
    :data:`MAX_CONSECUTIVE_SKIPS`)."""
    if ok:
        scaler.step(optimizer)
        run_of_skips = 0
    else:
        optimizer.zero_grad(set_to_none=True)
        history.skipped.append(step)
        run_of_skips += 1
        logger.warning(
            "step %d: non-finite loss or gradients (%s mixed precision); step skipped",
            step,
            "no" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
        )
        if run_of_skips >= MAX_CONSECUTIVE_SKIPS:
            raise CmbbenchError(
                f"training diverged: {run_of_skips} consecutive steps up to step {step} had "
                "non-finite loss or gradients (try a lower --lr, --set grad_clip=1, or "
                "--set amp_cpu=off)"
            )
    scaler.update()
    return run_of_skips


def _validate(
    validate: ValidateFn,
    model: nn.Module,
    train_model: nn.Module,
    done: int,
    history: _History,
    best_path: Path,
    ctx: DistContext,
) -> None:
    """Validate at step ``done``; a new best F1 (NaN counts as 0) is saved as ``best.pt``."""
    train_model.eval()
    with torch.no_grad():
        metrics = dict(validate(unwrap_model(model)))
    train_model.train()
    f1 = metrics.get("f1")
    f1 = 0.0 if f1 is None or not math.isfinite(f1) else float(f1)
    metrics = {"step": done, **metrics, "f1": f1}
    history.validations.append(metrics)
    if history.best_metric is None or f1 > history.best_metric:
        history.best_metric, history.best_step = f1, done
        if ctx.is_main:
            save_checkpoint(
                best_path,
                {"model": unwrap_model(model).state_dict(), "step": done, "best_metric": f1},
            )
        barrier(ctx)
    logger.info("step %d: val %s", done, metrics)


def _open_log(out_dir: str | Path, recipe: Recipe, history: _History) -> TrainingLog:
    """The run's training logs, continued from ``history`` (rewritten up to its step)."""
    return TrainingLog.open(
        out_dir,
        start=history.start,
        losses=history.losses,
        lrs=[lr_at(recipe, s) for s in range(history.start)],
        skipped=history.skipped,
        validations=history.validations,
    )


def train(
    model: nn.Module,
    sampler: PatchSampler,
    recipe: Recipe,
    *,
    out_dir: str | Path,
    device: torch.device,
    validate: ValidateFn | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    dist_ctx: DistContext | None = None,
    stop_after: int | None = None,
    write_logs: bool = True,
) -> TrainResult:
    """Train ``model`` for ``recipe.steps`` steps on batches from ``sampler``.

    Checkpoints go to ``out_dir/checkpoints/{last,best}.pt``. ``validate(model)`` returns a
    dict with at least ``"f1"`` (lesion-level F1 on the validation split); the best one is
    kept in ``best.pt`` (without ``validate`` the last weights are the best). ``stop_after``
    ends the loop early after that many steps (simulates an interruption; tests).
    ``write_logs``: rank 0 writes the training logs under ``out_dir``
    (:mod:`cmbbench.engine.training_log`; a resumed run continues them). The CPU's vector
    math is primed first (:func:`cmbbench.engine.environment.prime_vector_math`; ELU's
    ``expm1``, values unchanged).
    """
    prime_vector_math()
    ctx = dist_ctx or DistContext(device=device)
    ckpt_dir = Path(out_dir) / "checkpoints"
    last_path, best_path = ckpt_dir / LAST, ckpt_dir / BEST
    to_channels_last(model.to(device), device)
    optimizer = make_optimizer(model, recipe)
    amp_dtype = autocast_dtype(recipe, device)
    # loss scaling is needed for float16 only (bfloat16 has float32's range)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    criterion = CmbLoss.from_recipe(recipe)
    history = _History()
    if resume and last_path.exists():
        history = _resume(last_path, model, optimizer, scaler, device)
    elif resume:
        logger.info("--resume: no checkpoint at %s, starting from step 0", last_path)
    start = history.start
    if start > recipe.steps:
        raise CmbbenchError(
            f"checkpoint {last_path} is at step {start}, beyond this recipe's {recipe.steps} steps"
        )

    train_model = wrap_model(model, ctx)
    train_model.train()
    stop = recipe.steps if stop_after is None else min(recipe.steps, start + stop_after)
    loader = make_loader(
        sampler,
        start,
        stop,
        num_workers=recipe.num_workers,
        pin_memory=device.type == "cuda",
    )
    tracker = PhaseTracker(progress, "train", recipe.steps, "training", offset=start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = val_s = 0.0
    steps_run = 0
    run_of_skips = 0
    log = _open_log(out_dir, recipe, history) if write_logs and ctx.is_main else None
    t_step = time.perf_counter()

    def state_dict(step: int) -> dict[str, Any]:
        return {
            "model": unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "best_metric": history.best_metric,
            "best_step": history.best_step,
            "losses": list(history.losses),
            "skipped_steps": list(history.skipped),
            "fp32_retried_steps": list(history.retried),
            "validations": [dict(v) for v in history.validations],
            "rng": _rng_state(),
            "recipe": recipe.to_dict(),
        }

    try:
        for batch in loader:
            step = int(batch["step"])
            lr = lr_at(recipe, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = _batch_loss(train_model, criterion, batch, recipe, device, amp_dtype)
            ok = _backward(train_model, optimizer, scaler, loss, recipe)
            if (
                not ok
                and amp_dtype == torch.bfloat16
                and not ctx.enabled  # under DDP a redo on one rank only would hang the others
                and bool(torch.isfinite(loss.detach()))
            ):
                # A finite bf16 loss with non-finite gradients is the CPU kernels' doing
                # (oneDNN's bf16 convolution backward on AVX512-BF16: NaN/inf weight
                # gradients in some smp encoder layers, none in float32): redo the step
                # in float32 on the same batch instead of losing it.
                optimizer.zero_grad(set_to_none=True)
                loss = _batch_loss(train_model, criterion, batch, recipe, device, None)
                ok = _backward(train_model, optimizer, scaler, loss, recipe)
                history.retried.append(step)
                logger.info("step %d: non-finite bfloat16 gradients; redone in float32", step)
            run_of_skips = _update(
                optimizer, scaler, ok,
                step=step, amp_dtype=amp_dtype, history=history, run_of_skips=run_of_skips,
            )  # fmt: skip
            history.losses.append(float(loss.detach()))
            done = step + 1
            steps_run += 1
            now = time.perf_counter()
            train_s += now - t_step
            if log is not None:
                skipped = bool(history.skipped) and history.skipped[-1] == step
                log.step(step, history.losses[-1], lr, now - t_step, skipped)

            if validate is not None and (done % recipe.val_every == 0 or done == recipe.steps):
                t0 = time.perf_counter()
                _validate(validate, model, train_model, done, history, best_path, ctx)
                val_s += time.perf_counter() - t0
                if log is not None:
                    log.validation(history.validations[-1])
            if done % recipe.checkpoint_every == 0 or done == recipe.steps or done == stop:
                if ctx.is_main:
                    save_checkpoint(last_path, state_dict(done))
                barrier(ctx)
            recent = history.losses[-20:]
            tracker.emit(done, loss=sum(recent) / len(recent), best_f1=history.best_metric)
            t_step = time.perf_counter()
        if log is not None:
            log.write_plot(
                history.losses,
                [lr_at(recipe, s) for s in range(len(history.losses))],
                history.validations,
                skipped=history.skipped,
            )
    finally:
        if log is not None:
            log.close()

    final_step = start + steps_run
    if validate is None and final_step == recipe.steps and ctx.is_main:
        save_checkpoint(best_path, {"model": unwrap_model(model).state_dict(), "step": final_step})
        history.best_step = final_step
    barrier(ctx)
    return TrainResult(
        steps=final_step,
        start_step=start,
        best_step=history.best_step,
        best_metric=history.best_metric,
        best_checkpoint=best_path if best_path.exists() else None,
        last_checkpoint=last_path if last_path.exists() else None,
        losses=history.losses,
        skipped_steps=history.skipped,
        fp32_retried_steps=history.retried,
        validations=history.validations,
        train_seconds=train_s,
        val_seconds=val_s,
        seconds_per_step=train_s / steps_run if steps_run else None,
        peak_memory_bytes=peak_memory_bytes(device),
        device=str(device),
        amp_dtype=str(amp_dtype).replace("torch.", "") if amp_dtype is not None else None,
        log_files=log.files() if log is not None else {},
    )


def load_best_weights(model: nn.Module, result_or_path: TrainResult | str | Path) -> nn.Module:
    """Load the best checkpoint's weights into ``model`` (falls back to the last checkpoint)."""
    if isinstance(result_or_path, TrainResult):
        path = result_or_path.best_checkpoint or result_or_path.last_checkpoint
        if path is None:
            raise CmbbenchError("training wrote no checkpoint to load")
    else:
        path = Path(result_or_path)
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise CmbbenchError(f"checkpoint {path} does not fit this model ({err})") from None
    return model
