"""nnU-Net v2 trainers with cmbbench's training budgets (imports ``nnunetv2`` and torch).

Only :mod:`cmbbench_baselines.nnunet` imports this module, inside its functions, so that
importing the baselines never imports nnU-Net. Each trainer is nnU-Net's own
``nnUNetTrainer`` (its loss, augmentation, poly learning-rate schedule, deep supervision,
foreground oversampling and checkpoints) with a shorter schedule: ``num_epochs`` epochs of
``num_iterations_per_epoch`` training iterations (batches of the plans' batch size and patch
size) and ``num_val_iterations_per_epoch`` validation iterations. The patch size and the
network are the ones nnU-Net planned for the dataset (``3d_fullres``); the budget changes
nothing else.

nnU-Net finds trainers by name by importing every module of
``nnunetv2.training.nnUNetTrainer`` (:func:`nnunetv2.utilities.find_objects.recursive_find_trainer_class_by_name`)
and then the folders listed in ``$nnUNet_extTrainer``. cmbbench instantiates these classes
directly (no search) and, for nnU-Net's own predictor and command-line tools, writes a
one-line module re-exporting them into a folder that ``$nnUNet_extTrainer`` names
(:func:`cmbbench_baselines.nnunet.write_trainer_shim`); nothing is copied into nnU-Net's
package.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_cmbbenchBudget(nnUNetTrainer):  # nnU-Net names trainers nnUNetTrainer_*
    """nnU-Net's trainer with the schedule of the class attributes: ``EPOCHS`` epochs of
    ``ITERATIONS`` training and ``VAL_ITERATIONS`` validation iterations, a
    ``checkpoint_latest.pth`` every ``SAVE_EVERY`` epochs. nnU-Net's poly learning-rate
    schedule runs over ``EPOCHS``. (nnU-Net records the constructor's arguments by name, so a
    subclass changes the attributes only, never the signature.)"""

    EPOCHS = 1000
    ITERATIONS = 250
    VAL_ITERATIONS = 50
    SAVE_EVERY = 50

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(self.EPOCHS)
        self.num_iterations_per_epoch = int(self.ITERATIONS)
        self.num_val_iterations_per_epoch = int(self.VAL_ITERATIONS)
        self.save_every = int(self.SAVE_EVERY)


class nnUNetTrainer_cmbbenchQuick(nnUNetTrainer_cmbbenchBudget):
    """The ``quick`` (CPU) budget: 10 epochs × 20 iterations = 200 training iterations, plus
    2 validation iterations per epoch, with the plans' batch size and ``3d_fullres`` patch
    size (under the ``quick`` preset planned for 0.25 GB: 56×64×16 voxels (x×y×z), batch 2,
    on the quick synthetic data); a checkpoint (``checkpoint_latest.pth``) after every epoch,
    so an interrupted run loses at most one epoch."""

    EPOCHS = 10
    ITERATIONS = 20
    VAL_ITERATIONS = 2
    SAVE_EVERY = 1


class nnUNetTrainer_cmbbenchTiny(nnUNetTrainer_cmbbenchBudget):
    """The ``tiny`` (test) budget: 2 epochs × 2 iterations = 4 training iterations, 1
    validation iteration per epoch, a checkpoint after every epoch; for tests of the
    pipeline, not for results."""

    EPOCHS = 2
    ITERATIONS = 2
    VAL_ITERATIONS = 1
    SAVE_EVERY = 1


#: cmbbench's trainers by class name (nnU-Net records the class name in its checkpoints)
TRAINERS: dict[str, type[nnUNetTrainer]] = {
    cls.__name__: cls for cls in (nnUNetTrainer_cmbbenchQuick, nnUNetTrainer_cmbbenchTiny)
}


def find_trainer(name: str) -> type[nnUNetTrainer]:
    """The trainer class called ``name``: one of :data:`TRAINERS`, else nnU-Net's own search
    (its package, then ``$nnUNet_extTrainer``; raises ``RuntimeError`` when not found)."""
    if name in TRAINERS:
        return TRAINERS[name]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)
