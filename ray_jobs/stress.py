"""Ray job entrypoint for the `stress` stage.

    ray job submit --working-dir . -- python ray_jobs/stress.py ARGS      (≡ alle-dist stress ARGS)
"""
import os
import sys

# Inside `ray job submit --working-dir .` the project may not be installed: import it from the working dir.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alle_dist.cli import get_args_parser, run_stage  # noqa: E402


def main(args) -> int:
    return run_stage("stress", args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser("stress").parse_args()))
