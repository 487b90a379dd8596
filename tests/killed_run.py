"""A ``skelmae pretrain`` / ``finetune`` command line run with a callback that SIGKILLs the
process at a chosen point, so the resume tests kill a real run without racing it:

    python killed_run.py --at-step N -- pretrain --data ... --work-dir ...
    python killed_run.py --in-save N -- finetune ...   (after the N-th checkpoint's temporary file
                                                       is written, before its rename)
"""

import argparse
import os
import signal
import sys

from skelmae_ext import cli, train
from skelmae_ext.train.config import build


class Kill:
    def __init__(self, at_step=None, in_save=None):
        self.at_step, self.in_save, self.saves = at_step, in_save, 0

    def on_step_end(self, step):
        if step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint_written(self, temporary, path):
        self.saves += 1
        if self.saves == self.in_save:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at-step", type=int)
    parser.add_argument("--in-save", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then skelmae's arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    options = cli.build_parser().parse_args(command)
    config = build(options.command, *cli._updates(options.command, options))
    {"pretrain": train.pretrain, "finetune": train.finetune}[options.command](
        config, callbacks=[Kill(args.at_step, args.in_save)])


if __name__ == "__main__":
    main(sys.argv[1:])
