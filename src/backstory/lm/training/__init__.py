"""Training: settings, the run entry point, the loop, processes and logs.

Outputs in a run folder: ``checkpoints/step_XXXXXXXX/`` (see ``backstory.lm.checkpoint``)
and the speed log; the curves, parameters and summary go to the run's DVCLive folder
(``backstory.lm.training.logs``).
"""

from backstory.lm.training.config import TrainConfig
from backstory.lm.training.logs import LIVE_DIR, LR, SPEED_LOG, TRAIN_LOSS, VAL_LOSS, curve_file
from backstory.lm.training.run import train

__all__ = ["LIVE_DIR", "LR", "SPEED_LOG", "TRAIN_LOSS", "VAL_LOSS", "TrainConfig", "curve_file",
           "train"]
