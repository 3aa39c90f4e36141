"""Training: settings, the run entry point, the loop, processes and logs.

Outputs in a run folder: ``checkpoints/step_XXXXXXXX/`` (see ``backstory.lm.checkpoint``)
and the CSV logs of ``backstory.lm.training.logs``.
"""

from backstory.lm.training.config import TrainConfig
from backstory.lm.training.logs import SPEED_LOG, TRAIN_LOG, VAL_LOG
from backstory.lm.training.run import train

__all__ = ["SPEED_LOG", "TRAIN_LOG", "VAL_LOG", "TrainConfig", "train"]
