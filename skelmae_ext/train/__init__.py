"""Training and evaluation without writing a loop: the API under the ``skelmae`` command line.

    from skelmae_ext import train

    train.pretrain({"data": {"source": "ntu60_hrnet.pkl", "split": "xsub_train"},
                    "train": {"work_dir": "runs/mae", "epochs": 50}})
    train.finetune({"data": {"source": "ntu60_hrnet.pkl", "train_split": "xsub_train",
                             "val_split": "xsub_val"},
                    "train": {"work_dir": "runs/ssl", "pretrained": "runs/mae"}})
    train.evaluate("ntu60_hrnet.pkl", "xsub_val", "runs/ssl")      # top1, top5, ...

Configurations are nested dicts over ``config.DEFAULTS`` (every default is there); each
function returns a dict. The work directory's files are listed in ``workdir``, the log records
in ``logs``, the checkpoint's keys in ``checkpoint``, the score and feature files in
``evaluate``.
"""

from .checkpoint import CheckpointError
from .config import DEFAULTS, ConfigError
from .engine import Diverged, Interrupted
from .environment import info
from .evaluate import ensemble, evaluate, extract, knn
from .finetuning import finetune
from .pretraining import pretrain

__all__ = ["CheckpointError", "ConfigError", "DEFAULTS", "Diverged", "Interrupted", "ensemble", "evaluate", "extract",
           "finetune", "info", "knn", "pretrain"]
