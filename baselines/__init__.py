"""cmbbench reference baselines, registered only through cmbbench's public API.

cmbbench finds this package through its entry point (group ``cmbbench.models``), exactly as
it finds a third party's models; importing it registers every baseline. No module here
imports torch at import time (only creating a network does).
"""

from cmbbench_baselines import classical, nnunet, resenc, smp, two_stage, unet3d

__all__ = ["classical", "nnunet", "resenc", "smp", "two_stage", "unet3d"]
