"""``em-spark score|impute`` with the process killed (``os._exit(137)``) at one step of the output swap.

    python score_with_faults.py [--kill-at STEP] [--no-exchange] -- score --config job.yaml [--set K=V ...]

STEP is one of :mod:`em_spark.storage.outputs`' steps: ``staged`` (the new output written and
checked, nothing renamed), ``ready``, ``exchanged`` (swapped, the old copy not yet moved away),
``between-renames`` (with --no-exchange: the old output renamed away, the new one not yet in
place), ``before-cleanup`` (the old copy not yet deleted). ``--no-exchange`` makes the swap take
the two-rename fallback, as on a system without renameat2(RENAME_EXCHANGE). Without options it
is exactly ``em-spark``.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at")
    parser.add_argument("--no-exchange", action="store_true")
    args = parser.parse_args(argv[:split])

    from em_spark.storage import outputs

    if args.no_exchange:
        real = outputs._rename2
        outputs._rename2 = lambda src, dst, flags: False if flags == outputs._RENAME_EXCHANGE else real(src, dst, flags)
    if args.kill_at:

        def reached(step: str) -> None:
            if step == args.kill_at:
                print(f"FAULT killed at {step}", file=sys.stderr, flush=True)
                os._exit(137)

        outputs._reached = reached

    from em_spark.cli import main as cli_main

    return cli_main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
