"""`alle-dist <stage> ...`: one console script, one sub-command per pipeline stage.

Each stage module owns its arguments (`add_arguments(parser)`) and its entry (`main(args)`);
`ray_jobs/<stage>.py` calls the same two, so `python ray_jobs/<stage>.py ARGS` ≡ `alle-dist <stage> ARGS`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Stage name → module, in the order data flows. Imported lazily: `alle-dist --help` stays fast.
STAGES = {
    "prepare": "alle_dist.prepare.stage",
    "segment": "alle_dist.segment.stage",
    "train": "alle_dist.train.job",
    "tune": "alle_dist.ensemble.tune",
    "evaluate": "alle_dist.evaluate.stage",
    "classify": "alle_dist.classify.stage",
    "demo": "alle_dist.demo",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="YAML with per-stage sections; the command line overrides it")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray started in-process (ignored when RAY_ADDRESS is set)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _module(stage: str):
    return importlib.import_module(STAGES[stage])


def get_args_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The parser of one stage (for ray_jobs/<stage>.py), or of the whole `alle-dist` command."""
    if stage is not None:
        p = argparse.ArgumentParser(prog=f"alle-dist {stage}", description=_module(stage).__doc__.split("\n")[0])
        _module(stage).add_arguments(p)
        _common(p)
        return p
    p = argparse.ArgumentParser(prog="alle-dist", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGES:
        mod = _module(name)
        sp = sub.add_parser(name, help=mod.__doc__.split("\n")[0], description=mod.__doc__.split("\n")[0])
        mod.add_arguments(sp)
        _common(sp)
    return p


def run_stage(stage: str, args: argparse.Namespace) -> int:
    """Run one stage; a user error (bad path, bad config, a stale artifact) is one line on stderr and
    exit code 2, also when a Ray task or actor raised it."""
    from .errors import user_error_in

    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(message)s")
    try:
        return int(_module(stage).main(args) or 0)
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
