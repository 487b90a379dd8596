"""The recipes shipped with the package as YAML files a user can copy: ``pretrain.yaml`` and
``finetune.yaml`` (every option of ``skelmae pretrain`` / ``finetune`` with its default: pass a
copy to ``--config``), ``demo.yaml`` and ``demo_quick.yaml`` (the budgets of ``skelmae demo``
and ``skelmae demo --quick``; ``skelmae demo --config FILE`` takes a copy).
"""

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))
NAMES = ("pretrain", "finetune", "demo", "demo_quick")


def path(name):
    """The file of the shipped configuration ``name`` (one of NAMES)."""
    if name not in NAMES:
        raise ValueError(f"no shipped configuration {name!r}: the package has {list(NAMES)}")
    return os.path.join(FOLDER, f"{name}.yaml")
