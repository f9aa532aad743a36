"""Multi-sequence input: which channels a run uses, and a case's channels as one array.

A dataset's ``channels`` option (e.g. VALDO's ``channels=T2S,T1,T2``) names the run's input
channels in order: the first is the case's main image (:attr:`cmbbench.cases.Case.image`),
the others its extra channels (``CaseData.extra``). Without extras every function here
gives exactly the single-channel arrays of before, (X, Y, Z); with extras, (C, X, Y, Z).
Each channel is normalised on its own with the recipe's method; voxels an extra channel
has no value for (``CaseData.missing``, e.g. the NaNs outside VALDO's T1/T2 brain mask) are
left out of its statistics and set to 0 after normalisation. This module does not import
torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cmbbench.cases import Case
from cmbbench.errors import InputError

Normalizer = Callable[..., np.ndarray]


def channel_names(options: Mapping[str, Any]) -> list[str] | None:
    """The run's input channels in order, from a dataset's ``channels`` option (``None``
    when the option is not given: the dataset's one main channel)."""
    chans = options.get("channels")
    if chans is None:
        return None
    names = [chans] if isinstance(chans, str) else list(chans)
    return [str(c) for c in names]


def extra_channels(options: Mapping[str, Any]) -> tuple[str, ...]:
    """The extra channels (after the main one) named by a dataset's ``channels`` option."""
    names = channel_names(options)
    return tuple(names[1:]) if names else ()


def n_channels(options: Mapping[str, Any]) -> int:
    """Number of input channels of a run with these dataset options (1 without ``channels``)."""
    names = channel_names(options)
    return len(names) if names else 1


def normalized_channels(
    case: Case, normalize: Normalizer, extras: Sequence[str] = ()
) -> np.ndarray:
    """A case's normalised network input, float32.

    Without ``extras``: ``normalize(case.image)``, shape (X, Y, Z), exactly as a
    single-channel run has always done. With ``extras`` (names of ``CaseData.extra``
    channels): shape (C, X, Y, Z), C = 1 + len(extras), the main image first, every channel
    normalised on its own; an extra's missing voxels (``CaseData.missing``) are passed to
    ``normalize`` as ``exclude`` (left out of the statistics, 0 in the result). A requested
    channel the case lacks, or one of another shape, is an :class:`InputError` naming the case.
    """
    main = np.asarray(case.image, np.float32)
    if not extras:
        return np.asarray(normalize(main), np.float32)
    data = case.load()
    out = np.empty((1 + len(extras), *main.shape), np.float32)
    out[0] = normalize(main)
    for c, name in enumerate(extras, start=1):
        if name not in data.extra:
            raise InputError(
                f"channel {name!r} is not available for this case "
                f"(has: {', '.join(sorted(data.extra)) or 'no extra channels'})",
                case=case.case_id,
            )
        arr = np.asarray(data.extra[name], np.float32)
        if arr.shape != main.shape:
            raise InputError(
                f"channel {name!r} has shape {arr.shape}, the main image {main.shape}",
                case=case.case_id,
            )
        missing = data.missing.get(name)
        if missing is not None and np.any(missing):
            out[c] = normalize(arr, exclude=np.asarray(missing, bool))
        else:
            out[c] = normalize(arr)
    return out
