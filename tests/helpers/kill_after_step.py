"""`python kill_after_step.py STEP notellm-args...`: the `notellm` command, killed (os._exit(9), no cleanup, as
SIGKILL would) right after optimizer step STEP has finished (its checkpoint written, if one was due)."""

import os
import sys

from notellm.training import engine

STEP = int(sys.argv[1])
_after_step = engine.Engine._after_step


def after_step(self, module, optimizer, scheduler, pos, *rest):
    done = _after_step(self, module, optimizer, scheduler, pos, *rest)
    if pos.step == STEP:
        os._exit(9)
    return done


engine.Engine._after_step = after_step

from notellm.cli import app  # noqa: E402
from notellm.cli.common import run_cli  # noqa: E402

sys.exit(run_cli(app, sys.argv[2:]))
