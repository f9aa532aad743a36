"""What a model hands back (:class:`Prediction`), the :class:`Detector` protocol, and the
shape checks every network passes before the engine uses it.

Network contract (see :mod:`cmbbench.models.registry`): ``forward`` takes float32
``(B, 1, X, Y, Z)`` and returns logits ``(B, C, X, Y, Z)`` with the same spatial shape and
``C == 2`` (softmax over channels, class 1 = CMB) or ``C == 1`` (sigmoid).
Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from cmbbench.cases import Case
from cmbbench.errors import CmbbenchError

if TYPE_CHECKING:
    from cmbbench.models.registry import ModelInfo

OutputKind = Literal["softmax2", "logit1"]
# Spatial sizes a network accepts are multiples of this: one int for every axis, or one per
# axis (x, y, z), e.g. (32, 32, 8) for a network that does not downsample z in two stages.
Divisor = int | tuple[int, int, int]


def divisor_triple(
    divisor: Divisor | Sequence[int], *, name: str = "model"
) -> tuple[int, int, int]:
    """``divisor`` as one positive int per axis (x, y, z); raises naming ``name`` otherwise."""
    if isinstance(divisor, bool):
        raise CmbbenchError(f"{name}: divisor must be a positive int or 3 of them, got {divisor!r}")
    if isinstance(divisor, (int, np.integer)):
        values: tuple[Any, ...] = (divisor,) * 3
    elif isinstance(divisor, Sequence) and not isinstance(divisor, str) and len(divisor) == 3:
        values = tuple(divisor)
    else:
        raise CmbbenchError(f"{name}: divisor must be a positive int or 3 of them, got {divisor!r}")
    if not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise CmbbenchError(f"{name}: divisor must be a positive int or 3 of them, got {divisor!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def compact_divisor(divisor: Divisor | Sequence[int], *, name: str = "model") -> Divisor:
    """``divisor`` validated, as one int when it is the same on every axis, else (x, y, z)."""
    d = divisor_triple(divisor, name=name)
    return d[0] if d[0] == d[1] == d[2] else d


def round_up_to_divisor(shape: Sequence[int], divisor: Divisor) -> tuple[int, int, int]:
    """The smallest sizes >= ``shape`` (voxels, 3 axes) that are multiples of ``divisor``."""
    d = divisor_triple(divisor)
    return tuple(-(-int(s) // k) * k for s, k in zip(tuple(shape)[-3:], d, strict=True))  # type: ignore[return-value]


def _divisor_text(divisor: Divisor) -> str:
    d = divisor_triple(divisor)
    return str(d[0]) if d[0] == d[1] == d[2] else "×".join(map(str, d)) + " (x×y×z)"


class ModelShapeError(CmbbenchError, ValueError):
    """A model cannot take an input of this size, or its output does not match its input."""


@dataclass
class Prediction:
    """One case's prediction, in the case's own voxel grid / world space.

    Exactly one of:

    * ``prob``: float32 (X, Y, Z) probability of CMB in [0, 1];
    * ``mask``: bool/uint8 (X, Y, Z) binary or integer instance map;
    * ``points``: float64 (N, 3) detected centres in world mm (use ``case.affine``), with
      ``scores`` float (N,) confidences (optional; default all 1).

    ``meta``: free-form details (e.g. the post-processing applied).
    """

    prob: np.ndarray | None = None
    mask: np.ndarray | None = None
    points: np.ndarray | None = None
    scores: np.ndarray | None = None
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("prob", "mask", "points") if getattr(self, n) is not None]
        if len(given) != 1:
            raise CmbbenchError(
                f"a Prediction holds exactly one of prob, mask, points; got {given or 'none'}"
            )
        if self.prob is not None:
            self.prob = np.asarray(self.prob, dtype=np.float32)
            if self.prob.ndim != 3:
                raise CmbbenchError(f"Prediction.prob must be 3-D (X, Y, Z), got {self.prob.shape}")
        if self.mask is not None:
            self.mask = np.asarray(self.mask)
            if self.mask.ndim != 3:
                raise CmbbenchError(f"Prediction.mask must be 3-D (X, Y, Z), got {self.mask.shape}")
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
            if self.scores is None:
                self.scores = np.ones(len(self.points), dtype=np.float64)
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != len(self.points):
                raise CmbbenchError(
                    f"Prediction: {len(self.points)} points but {len(self.scores)} scores"
                )

    @property
    def kind(self) -> Literal["prob", "mask", "points"]:
        """Which of the three forms this prediction holds."""
        if self.prob is not None:
            return "prob"
        return "mask" if self.mask is not None else "points"

    @property
    def array(self) -> np.ndarray:
        """The held array (``prob``, ``mask`` or ``points``), e.g. to pass to scoring."""
        value = self.prob if self.prob is not None else self.mask
        return value if value is not None else self.points  # type: ignore[return-value]


@runtime_checkable
class Detector(Protocol):
    """Any model the engine can run: fitted on train/val cases, then predicts a case.

    ``config`` holds the run's recipe and options (seed, device, output folder, ...);
    detectors use what they need. Networks need not implement this: the shared engine trains
    and runs any ``nn.Module`` itself. Optionally, ``config()`` returns the fitted settings
    as a JSON-able dict; the engine stores it in the run record (``training.fitted``), and an
    optional ``load_config(fitted)`` takes it back, which lets ``cmbbench predict`` run the
    fitted detector of a finished run on new images.
    """

    def fit(self, train: Sequence[Case], val: Sequence[Case], config: Mapping[str, Any]) -> None:
        """Fit on ``train``; ``val`` may be used for thresholds / model selection only."""
        ...

    def predict(self, case: Case) -> Prediction:
        """Predict one case (its image at ``case.image``, spacing/affine on the case)."""
        ...


def check_input_size(info: ModelInfo | str, shape: Sequence[int]) -> None:
    """Raise :class:`ModelShapeError` unless every spatial size in ``shape`` (voxels, the
    last three entries) is a multiple of the model's ``divisor``."""
    if isinstance(info, str):
        from cmbbench.models.registry import model_info

        info = model_info(info)
    spatial = tuple(int(s) for s in tuple(shape)[-3:])
    d = divisor_triple(info.divisor, name=f"model {info.name!r}")
    if any(s % k for s, k in zip(spatial, d, strict=True)):
        ok = round_up_to_divisor(spatial, d)
        raise ModelShapeError(
            f"model {info.name!r} needs spatial sizes divisible by {_divisor_text(d)}, got "
            f"{spatial} (e.g. use {ok})"
        )


def check_output_shape(
    model: Any,
    in_shape: Sequence[int] = (32, 32, 32),
    *,
    name: str | None = None,
    divisor: Divisor = 1,
    device: str | None = None,
    in_channels: int = 1,
) -> OutputKind:
    """Run one forward pass on zeros (1, ``in_channels``, *``in_shape``) (voxels) and check it.

    Returns ``"softmax2"`` (2 output channels) or ``"logit1"`` (1 channel). Raises
    :class:`ModelShapeError` naming the model when the input size is not a multiple of
    ``divisor``, when the forward fails, when the output is not 5-D with the input's spatial
    shape, or when its channel count is not 1 or 2. The model is put in eval mode for the
    check and its previous mode restored. ``device``: where to run; default the device of
    the model's first parameter (CPU for a parameter-free model).
    """
    import torch

    if device is None:
        first = next(iter(model.parameters()), None)
        device = str(first.device) if first is not None else "cpu"

    label = name or type(model).__name__
    spatial = tuple(int(s) for s in tuple(in_shape)[-3:])
    d = divisor_triple(divisor, name=f"model {label!r}")
    if any(s % k for s, k in zip(spatial, d, strict=True)):
        raise ModelShapeError(
            f"model {label!r} needs spatial sizes divisible by {_divisor_text(d)}, got {spatial}"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.zeros((1, int(in_channels), *spatial), dtype=torch.float32, device=device)
            try:
                out = model(x)
            except RuntimeError as err:
                raise ModelShapeError(
                    f"model {label!r} failed on an input of spatial shape {spatial}"
                    + (f" with {in_channels} channels" if in_channels != 1 else "")
                    + f": {err}"
                ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelShapeError(
            f"model {label!r} must return one tensor (B, C, X, Y, Z), got {type(out).__name__}"
        )
    if out.ndim != 5 or tuple(out.shape[2:]) != spatial:
        raise ModelShapeError(
            f"model {label!r}: output shape {tuple(out.shape)} does not match the input "
            f"(1, 1, *{spatial}); expected (1, 1 or 2, *{spatial})"
        )
    channels = int(out.shape[1])
    if channels not in (1, 2):
        raise ModelShapeError(
            f"model {label!r}: output has {channels} channels, expected 1 (logit) or 2 (softmax)"
        )
    return "softmax2" if channels == 2 else "logit1"
