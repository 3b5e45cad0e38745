#!/usr/bin/env python3
"""Regenerate data/digits.bin from the scikit-learn copy of the UCI digits CSV.

Usage (from the repository root):

    python3 scripts/pack_digits.py ../shared/data/digits.csv data/digits.bin

Input: a headerless CSV of 1,797 rows, each 64 pixel values (0..16, row-major
8x8 image) followed by the class label (0..9) - the `digits.csv` shipped with
scikit-learn (`sklearn/datasets/data/digits.csv.gz`, decompressed).

Output: 1,797 records of 65 bytes each (64 pixel bytes, then the label byte),
in the CSV's row order, no header: 116,805 bytes. `tapegrad::data::digits()`
embeds this file with `include_bytes!` and re-validates it at load.

Only the Python standard library is used.
"""
import csv
import hashlib
import sys

ROWS, PIXELS = 1797, 64


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    out = bytearray()
    with open(src, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if len(rows) != ROWS:
        sys.exit(f"{src}: expected {ROWS} rows, found {len(rows)}")
    for i, row in enumerate(rows, 1):
        if len(row) != PIXELS + 1:
            sys.exit(f"{src}:{i}: expected {PIXELS + 1} columns, found {len(row)}")
        # Values are written as integers, possibly as "3.0" in other exports.
        vals = [int(float(v)) for v in row]
        if any(v != float(s) for v, s in zip(vals, row)):
            sys.exit(f"{src}:{i}: non-integer value")
        if not all(0 <= v <= 16 for v in vals[:PIXELS]):
            sys.exit(f"{src}:{i}: pixel outside 0..16")
        if not 0 <= vals[PIXELS] <= 9:
            sys.exit(f"{src}:{i}: label {vals[PIXELS]} outside 0..9")
        out.extend(vals)
    with open(dst, "wb") as f:
        f.write(out)
    counts = [0] * 10
    for i in range(ROWS):
        counts[out[i * (PIXELS + 1) + PIXELS]] += 1
    print(f"wrote {dst}: {len(out)} bytes, sha256 {hashlib.sha256(out).hexdigest()}")
    print("class counts:", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
