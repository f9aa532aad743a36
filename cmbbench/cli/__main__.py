"""``python -m cmbbench.cli ...`` (e.g. under ``torchrun -m cmbbench.cli run ...``)."""

from cmbbench.cli import main

main()
