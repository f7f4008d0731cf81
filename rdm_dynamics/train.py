"""``python -m rdm_dynamics.train``: train a Neural-RDM diffusion model.

    python -m rdm_dynamics.train --model RDM-DiT-T/2 --data digits --steps 2000 --out runs/dit
    python -m rdm_dynamics.train --config run.yaml --lr 3e-4          # flags override the file
    python -m rdm_dynamics.train --out runs/dit --resume               # continue a killed run
    torchrun --nproc_per_node 2 -m rdm_dynamics.train ...             # data-parallel (DDP)

The settings are those of ``training.settings.TrainConfig`` (one flag each; defaults, then a YAML
or TOML file given by ``--config``, then the flags); the loop is ``training.loop.train``.  The run
folder (``--out``) receives ``log.jsonl`` (one JSON object per logged step), sample grids under
``samples/`` and checkpoints (safetensors + JSON, never unpickled).

Exit codes: 0 done; 1 the loss or gradient norm became NaN or infinite (the message names the last
good checkpoint); 2 bad input (flags, config file, data, checkpoint), one line on stderr.
"""

from __future__ import annotations

import os
import sys

from .cli import UsageError
from .training.checkpoint import CheckpointError
from .training.loop import TrainingDiverged, train
from .training.settings import resolve_config

PROG = "python -m rdm_dynamics.train"

__all__ = ["main"]


def main(argv=None) -> int:
    try:  # bad input is one line and exit code 2, a diverged run exit code 1
        cfg, resume = resolve_config(sys.argv[1:] if argv is None else argv, PROG,
                                     __doc__.splitlines()[0])
        summary = train(cfg, resume)
    except (UsageError, CheckpointError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained to step {summary['step']} (loss {summary['loss']:.5f}) in "
              f"{summary['seconds']:.1f} s; checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
