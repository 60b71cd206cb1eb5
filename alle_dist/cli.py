"""`alle-dist <stage> ...`: one console script, one sub-command per pipeline stage.

A stage's flags live in alle_dist.flags (argparse + config only: `--help` imports no torch, Ray or
pyarrow); its `main(args)` lives in the stage module, imported only to run it. `ray_jobs/<stage>.py`
calls the same parser and `run_stage`, so `python ray_jobs/<stage>.py ARGS` ≡ `alle-dist <stage> ARGS`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import flags

# Stage name → (its flags, the module whose main(args) runs it), in the order data flows.
STAGES = {
    "prepare": (flags.prepare, "alle_dist.prepare.stage"),
    "segment": (flags.segment, "alle_dist.segment.stage"),
    "train": (flags.train, "alle_dist.train.stage"),
    "tune": (flags.tune, "alle_dist.tune.stage"),
    "evaluate": (flags.evaluate, "alle_dist.evaluate.stage"),
    "stress": (flags.stress, "alle_dist.stress.stage"),
    "classify": (flags.classify, "alle_dist.classify.stage"),
    "export": (flags.export, "alle_dist.export.stage"),
    "review": (flags.review, "alle_dist.review.stage"),
    "audit": (flags.audit, "alle_dist.audit.stage"),
    "demo": (flags.demo, "alle_dist.demo"),
}


def _stage_parser(p: argparse.ArgumentParser, stage: str) -> argparse.ArgumentParser:
    STAGES[stage][0](p)
    flags.common(p)
    return p


def _summary(stage: str) -> str:
    return STAGES[stage][0].__doc__.strip().split("\n")[0]


def get_args_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The parser of one stage (for ray_jobs/<stage>.py), or of the whole `alle-dist` command."""
    if stage is not None:
        return _stage_parser(argparse.ArgumentParser(prog=f"alle-dist {stage}", description=_summary(stage)), stage)
    p = argparse.ArgumentParser(prog="alle-dist", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGES:
        _stage_parser(sub.add_parser(name, help=_summary(name), description=_summary(name)), name)
    return p


def run_stage(stage: str, args: argparse.Namespace) -> int:
    """Run one stage; a user error (bad path, bad config, a stale artifact) is one line on stderr and
    exit code 2, also when a Ray task or actor raised it."""
    from .errors import user_error_in
    from .runtime import configure_logging

    configure_logging(args.log_level)
    try:
        return int(importlib.import_module(STAGES[stage][1]).main(args) or 0)
    except Exception as exc:  # noqa: BLE001 - re-raised unless a user error is behind it
        user = user_error_in(exc)
        if user is None:
            raise
        print(f"alle-dist {stage}: error: {str(user).strip().splitlines()[0]}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_stage(args.stage, args)


if __name__ == "__main__":
    sys.exit(main())
