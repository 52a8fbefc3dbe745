"""``python -m msds_lightning.cli ...`` = ``msds ...`` (the form DDP's launcher and the SLURM templates use)."""

import sys

from msds_lightning.cli import main

sys.exit(main())
