#!/usr/bin/python3
"""Convert torchvision's CIFAR-10 pickles (cifar-10-batches-py) to the official binary format.

usage: cifar10_pickle_to_bin.py BATCH [BATCH ...] --out FILE.bin
       cifar10_pickle_to_bin.py cifar-10-batches-py/ --out-dir DIR

A pickle batch (data_batch_1 ... data_batch_5, test_batch) is a dict with 'data', an N x 3072
uint8 array (1024 red, 1024 green, 1024 blue values of a row-major 32x32 image), and 'labels',
N class indices 0..9. The binary format (cifar-10-binary.tar.gz, what bitbench's format
cifar-binary reads) stores each image as one label byte followed by the same 3072 bytes, so the
conversion copies bytes and changes nothing. --out writes every given batch, in the order given,
into one file; --out-dir writes <batch>.bin per batch (data_batch_1.bin ..., test_batch.bin, the
official names). A directory argument stands for its batches in the official order.
"""
import argparse
import os
import pickle
import sys

BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def fail(msg):
    sys.exit(f"cifar10_pickle_to_bin.py: {msg}")


def load_batch(path):
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        fail(f"'{path}' is not a CIFAR-10 pickle batch: {e}")
    if not isinstance(d, dict):
        fail(f"'{path}' holds a {type(d).__name__}, not a CIFAR-10 batch dict")

    def get(key):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
        fail(f"'{path}' has no '{key}' entry (keys: {sorted(str(k) for k in d)})")

    data, labels = get("data"), list(get("labels"))
    if hasattr(data, "shape"):
        if str(getattr(data, "dtype", "")) != "uint8":
            fail(f"'{path}': 'data' is {getattr(data, 'dtype', type(data).__name__)}, expected uint8")
        if len(data.shape) != 2 or data.shape[1] != 3072:
            fail(f"'{path}': 'data' has shape {tuple(data.shape)}, expected (N, 3072)")
        raw = data.tobytes(order="C")
    elif isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    else:
        fail(f"'{path}': 'data' is a {type(data).__name__}, not an array")
    n = len(raw) // 3072
    if len(raw) != n * 3072 or n != len(labels):
        fail(f"'{path}': {len(labels)} labels for {len(raw) / 3072:g} images")
    out = []
    for i, y in enumerate(labels):
        try:
            v = int(y)
        except (TypeError, ValueError):
            v = -1
        if v != y or not 0 <= v <= 9:
            fail(f"'{path}': label {i} is {y!r}, expected a class index 0..9")
        out.append(v)
    labels = out
    return raw, labels


def records(raw, labels):
    out = bytearray()
    for i, y in enumerate(labels):
        out.append(y)
        out += raw[i * 3072:(i + 1) * 3072]
    return bytes(out)


def expand(inputs):
    files = []
    for p in inputs:
        if os.path.isdir(p):
            found = [os.path.join(p, b) for b in BATCHES if os.path.isfile(os.path.join(p, b))]
            if not found:
                fail(f"folder '{p}' holds none of {', '.join(BATCHES)}")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            fail(f"'{p}' does not exist")
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="pickle batches, or the cifar-10-batches-py folder")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="one binary file holding every batch, in the order given")
    g.add_argument("--out-dir", help="folder for <batch>.bin, one per batch")
    a = ap.parse_args()
    files = expand(a.inputs)
    total = 0
    if a.out:
        with open(a.out, "wb") as f:
            for p in files:
                raw, labels = load_batch(p)
                f.write(records(raw, labels))
                total += len(labels)
        print(f"{a.out}: {total} images from {len(files)} batch(es)")
    else:
        os.makedirs(a.out_dir, exist_ok=True)
        for p in files:
            raw, labels = load_batch(p)
            out = os.path.join(a.out_dir, os.path.basename(p) + ".bin")
            with open(out, "wb") as f:
                f.write(records(raw, labels))
            total += len(labels)
            print(f"{out}: {len(labels)} images")


if __name__ == "__main__":
    main()
