"""Ray job entrypoint for the `export` stage.

    ray job submit --working-dir . -- python ray_jobs/export.py ARGS      (≡ alle-dist export ARGS)
"""
import os
import sys

# Inside `ray job submit --working-dir .` the project may not be installed: import it from the working dir.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alle_dist.cli import get_args_parser, run_stage  # noqa: E402


def main(args) -> int:
    return run_stage("export", args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser("export").parse_args()))
