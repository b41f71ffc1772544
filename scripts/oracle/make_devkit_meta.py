#!/usr/bin/python3
"""Test helper: writes a synthetic ILSVRC2012 devkit meta.mat (for the devkit_to_labels.py test).

    make_devkit_meta.py --synsets synsets.tsv --out meta.mat --ids ids.txt [--seed 0]

Like the real file, `synsets` is an N x 1 struct array with fields ILSVRC2012_ID, WNID, words,
gloss, num_children, children, wordnet_height, num_train_images: the 1000 leaf classes get IDs
1..1000 in a seeded random order (the real devkit numbering is not sorted-wnid order either),
followed by a few non-leaf entries that a converter must skip. ids.txt receives "<ID> <wnid>" for
the leaf classes, so the test can write a matching ground-truth file.
"""
import argparse
import random

import numpy as np
import scipy.io

FIELDS = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
          "num_train_images"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--synsets", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rows = [line.rstrip("\n").split("\t") for line in open(a.synsets) if line.strip()]
    leaves = [(r[1], r[2] if len(r) > 2 else r[1]) for r in rows]
    random.Random(a.seed).shuffle(leaves)
    parents = [(f"n9999{i:04d}", f"parent {i}") for i in range(12)]
    arr = np.zeros((len(leaves) + len(parents), 1), dtype=[(f, "O") for f in FIELDS])
    for i, (wnid, words) in enumerate(leaves + parents):
        leaf = i < len(leaves)
        arr[i, 0] = (i + 1, wnid, words, "", 0 if leaf else 3,
                     np.zeros((0,), dtype=np.uint16) if leaf else np.array([1, 2, 3], dtype=np.uint16),
                     0 if leaf else 1, 1300 if leaf else 0)
    scipy.io.savemat(a.out, {"synsets": arr})
    with open(a.ids, "w") as f:
        for i, (wnid, _) in enumerate(leaves):
            f.write(f"{i + 1} {wnid}\n")


if __name__ == "__main__":
    main()
