#!/usr/bin/python3
"""Converts the ILSVRC2012 devkit's validation ground truth into bitbench's flat-folder label file.

    devkit_to_labels.py --meta ILSVRC2012_devkit_t12/data/meta.mat \
        --ground-truth ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt \
        --out /path/to/val/val_labels.txt [--synsets /path/to/synsets.tsv] [--val-dir /path/to/val]

The ground-truth file has one 1-based ILSVRC2012_ID per line, line k for ILSVRC2012_val_<k:08d>.JPEG.
The IDs are the devkit's own class numbering (not sorted-wnid order), so they are mapped to wnids
through meta.mat's `synsets` table (the 1000 leaf entries, num_children == 0). Each output line is
"<file> <wnid>"; bitbench maps wnids to class indices in torchvision's sorted-wnid order.
A file named val_labels.txt inside the validation folder is picked up automatically; elsewhere, point
BITBENCH_IMAGENET_LABELS at it.

--synsets also writes the 1000-class list ("index<TAB>wnid<TAB>words", sorted by wnid, the
torchvision order) for BITBENCH_IMAGENET_SYNSETS, for machines without imagenet-sample/synsets.tsv.
--val-dir checks that every listed image exists.
Needs scipy (scipy.io.loadmat).
"""
import argparse
import os
import sys

import scipy.io


def leaf_synsets(meta_path):
    """{ILSVRC2012_ID: (wnid, words)} for the 1000 leaf classes of meta.mat."""
    synsets = scipy.io.loadmat(meta_path, squeeze_me=True)["synsets"]
    out = {}
    for s in synsets:
        if int(s["num_children"]) != 0:
            continue
        out[int(s["ILSVRC2012_ID"])] = (str(s["WNID"]), str(s["words"]))
    if len(out) != 1000:
        sys.exit(f"devkit_to_labels.py: '{meta_path}' has {len(out)} leaf synsets, expected 1000")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meta", required=True, help="devkit data/meta.mat")
    p.add_argument("--ground-truth", required=True, help="devkit data/ILSVRC2012_validation_ground_truth.txt")
    p.add_argument("--out", required=True, help="label file to write ('<file> <wnid>' lines)")
    p.add_argument("--synsets", help="also write the sorted class list here")
    p.add_argument("--val-dir", help="check that every image exists in this folder")
    a = p.parse_args()

    by_id = leaf_synsets(a.meta)
    lines = []
    with open(a.ground_truth) as f:
        for lineno, line in enumerate(f, 1):
            tok = line.strip()
            if not tok:
                continue
            try:
                cid = int(tok)
            except ValueError:
                sys.exit(f"devkit_to_labels.py: {a.ground_truth}:{lineno}: '{tok}' is not an ILSVRC2012_ID")
            if cid not in by_id:
                sys.exit(f"devkit_to_labels.py: {a.ground_truth}:{lineno}: ILSVRC2012_ID {cid} is not a leaf class")
            name = f"ILSVRC2012_val_{len(lines) + 1:08d}.JPEG"
            if a.val_dir and not os.path.isfile(os.path.join(a.val_dir, name)):
                sys.exit(f"devkit_to_labels.py: image '{name}' not found in '{a.val_dir}'")
            lines.append(f"{name} {by_id[cid][0]}\n")
    if not lines:
        sys.exit(f"devkit_to_labels.py: '{a.ground_truth}' lists no images")
    with open(a.out, "w") as f:
        f.writelines(lines)
    if a.synsets:
        with open(a.synsets, "w") as f:
            for i, (wnid, words) in enumerate(sorted(by_id.values())):
                f.write(f"{i}\t{wnid}\t{words}\n")
    print(f"wrote {len(lines)} labels to {a.out}" + (f" and 1000 classes to {a.synsets}" if a.synsets else ""))


if __name__ == "__main__":
    main()
