"""How long the up-front parse of every local data file takes on full-size openpangu18 data.

``quantsweep run --data-dir`` parses every record of every data file before any model loads
(:func:`quantsweep.eval.offline.check_columns`), so a malformed line deep in a file is an exit 2
naming the file and line instead of a failed baseline after the load. This measures that check on
files with the row counts of the public datasets the openpangu18 suite reads (C4's validation
shard being most of the bytes) and row sizes like theirs, all as JSON Lines (C4 gzipped, as
published): the slowest format to check, since each line is parsed in Python.

For scale, in the same run, it reads a 512 MiB file from the same disk and extrapolates to the
bytes a bf16 openPangu-Embedded-1B checkpoint holds (about 2.3 GB; the 7B's are about 15 GB),
which any model load must at least read.

    PYTHONPATH=. python benchmarks/bench_data_checks.py   # from the repository root; ~100 MB in a temporary folder
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tempfile
import time
from pathlib import Path

from quantsweep.eval.offline import check_columns, find_data_files
from quantsweep.eval.suites import expand_tasks, suite_entry

# Rows per evaluated split in the public datasets, and a typical row's text size in characters.
SIZES = {
    "wikitext": (62, 20_000),
    "c4": (45_576, 2_200),
    "arc_easy": (2_376, 400),
    "arc_challenge": (1_172, 450),
    "hellaswag": (10_042, 600),
    "piqa": (1_838, 300),
    "winogrande": (1_267, 200),
    "boolq": (3_270, 900),
    "openbookqa": (500, 300),
    "social_iqa": (1_954, 250),
    "lambada_openai": (5_153, 450),
    "mmlu_all": (14_042, 500),
    "ceval_all": (1_346, 300),
    "cmmlu_all": (11_582, 250),
    "gsm8k": (8_792, 500),  # test 1,319 + train 7,473 (few-shot examples)
    "math_all": (5_000, 500),
    "humaneval_offline": (164, 900),
    "mbpp_offline": (500, 600),
}
CHECKPOINT_1B_BYTES = 2.3e9


def _row(columns, width: int, rng: random.Random) -> dict:
    words = "the of and a to in is was for on that with as by at from".split()
    text = " ".join(rng.choice(words) for _ in range(max(1, width // 5)))
    row = {}
    for column in columns:
        if column in ("label", "answer", "gold"):
            row[column] = rng.randrange(4)
        elif column in ("choices", "endings"):
            row[column] = [text[:40]] * 4
        else:
            row[column] = text[: max(8, width // len(columns))]
    return row


def write_full_size(root: Path) -> int:
    rng = random.Random(0)
    total = 0
    for task in expand_tasks(["openpangu18"]):
        entry = suite_entry(task)
        rows, width = SIZES[task]
        folder = root / entry.data.dir
        folder.mkdir(parents=True, exist_ok=True)
        for stem in entry.data.splits.values():
            lines = "".join(json.dumps(_row(entry.data.columns, width, rng)) + "\n" for _ in range(rows))
            if task == "c4":
                path = folder / f"{stem}.json.gz"
                path.write_bytes(gzip.compress(lines.encode(), compresslevel=1))
            else:
                path = folder / f"{stem}.jsonl"
                path.write_text(lines)
            total += len(lines.encode())
    return total


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        size = write_full_size(root)
        start = time.perf_counter()
        for task in expand_tasks(["openpangu18"]):
            entry = suite_entry(task)
            _, files, missing = find_data_files(entry, root)
            assert not missing, (task, missing)
            check_columns(entry, files)
        check_s = time.perf_counter() - start

        blob = root / "weights.bin"
        with open(blob, "wb") as stream:
            for _ in range(64):
                stream.write(os.urandom(8 << 20))
            stream.flush()
            os.fsync(stream.fileno())
            os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # read from disk, not the page cache
        start = time.perf_counter()
        with open(blob, "rb") as stream:
            while stream.read(64 << 20):
                pass
        read_s = time.perf_counter() - start
        rate = blob.stat().st_size / read_s
    print(f"openpangu18 data: {size / 1e6:.0f} MB of JSON Lines (uncompressed), parsed whole in {check_s:.2f} s")
    print(
        f"disk read: {rate / 1e9:.2f} GB/s (page cache dropped); a 1B bf16 checkpoint's 2.3 GB: {CHECKPOINT_1B_BYTES / rate:.2f} s"
    )
    print(f"check / reading the 1B checkpoint's bytes: {check_s / (CHECKPOINT_1B_BYTES / rate):.2f}")


if __name__ == "__main__":
    main()
