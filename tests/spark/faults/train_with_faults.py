"""spark-submit driver: em_spark's train job (``em-spark train``) with optional driver-side faults.

    spark-submit --master 'local[2]' train_with_faults.py --fault-dir DIR [--pause-after K] [--torn-at K] \
        [--hold-after K --release-file PATH] \
        --config job.yaml

Without fault options it is exactly ``jobs/train.py``. Each fault fires once: a marker file
in ``--fault-dir`` records it, so running the same command again runs the plain job (a
resume).

--pause-after K  after checkpoint sequence K is committed, the driver sleeps, so that the
                 test can SIGKILL it at a known point (after iteration K, before K+1).
--hold-after K   after checkpoint sequence K is committed, the driver waits until the file
                 ``--release-file`` exists (or 600 s), so that the test can change the world
                 (restart a Spark Connect server) between iterations K and K+1.
--torn-at K      when checkpoint sequence K is written, half of its bytes are written under
                 its final name, in place (as GCS or HDFS publish a failed writer's object),
                 and the driver dies at once (os._exit(137)), as a machine crash would.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _claim(marker: str) -> bool:
    """True exactly once per marker file (O_EXCL)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def _object_name(sequence: int) -> str:
    return f"ckpt-{sequence:010d}.emck"


def install_pause(fault_dir: str, sequence: int) -> None:
    from em_spark.storage import checkpoints

    real_commit = checkpoints.CheckpointStore.commit

    def commit(self, seq, payload):
        uri = real_commit(self, seq, payload)
        if seq == sequence and _claim(os.path.join(fault_dir, f"paused-{sequence}")):
            print(f"FAULT paused after committing checkpoint {sequence}", file=sys.stderr, flush=True)
            time.sleep(600)  # the test kills the driver here
        return uri

    checkpoints.CheckpointStore.commit = commit


def install_hold(fault_dir: str, sequence: int, release_file: str) -> None:
    from em_spark.storage import checkpoints

    real_commit = checkpoints.CheckpointStore.commit

    def commit(self, seq, payload):
        uri = real_commit(self, seq, payload)
        if seq == sequence and _claim(os.path.join(fault_dir, f"held-{sequence}")):
            print(f"FAULT holding after committing checkpoint {sequence}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 600
            while not os.path.exists(release_file) and time.monotonic() < deadline:
                time.sleep(0.05)
            print(f"FAULT released after checkpoint {sequence}", file=sys.stderr, flush=True)
        return uri

    checkpoints.CheckpointStore.commit = commit


def install_torn_write(fault_dir: str, sequence: int) -> None:
    from em_spark.storage import checkpoints, fs

    real_write = fs.write_object

    def torn_write(filesystem, path, data, *args, **kwargs):
        if path.endswith("/" + _object_name(sequence)) and _claim(os.path.join(fault_dir, f"torn-{sequence}")):
            with filesystem.open_output_stream(path) as out:  # in place, under the final name
                out.write(bytes(data[: len(data) // 2]))
            print(
                f"FAULT tore checkpoint {sequence}: wrote {len(data) // 2} of {len(data)} bytes to {path}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(137)
        return real_write(filesystem, path, data, *args, **kwargs)

    # The store calls the name it imported; patch both so neither path escapes.
    fs.write_object = torn_write
    if hasattr(checkpoints, "write_object"):
        checkpoints.write_object = torn_write


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--fault-dir", required=True)
    parser.add_argument("--pause-after", type=int)
    parser.add_argument("--torn-at", type=int)
    parser.add_argument("--hold-after", type=int)
    parser.add_argument("--release-file")
    args, train_args = parser.parse_known_args()
    if args.pause_after is not None:
        install_pause(args.fault_dir, args.pause_after)
    if args.hold_after is not None:
        install_hold(args.fault_dir, args.hold_after, args.release_file)
    if args.torn_at is not None:
        install_torn_write(args.fault_dir, args.torn_at)
    from em_spark.cli import main as cli_main

    return cli_main(["train", *train_args])


if __name__ == "__main__":
    sys.exit(main())
