#!/usr/bin/python3
"""An external bitbench method (docs/ADDING_A_METHOD.md, "An external method"): Deep-Compression
style weight sharing, one 1-D k-means codebook of k = 2^b values per layer (linear seeding over
[min, max], Lloyd iterations in float64 until the assignment is stable or --max-iter; the same
algorithm as bitbench's `kmeans init=linear scope=layer`), indices bit-packed. No entropy coding:
a plain byte packing, in three payload files whose names file them under bitbench's accounting
components (codebook* -> codebook, side* -> side, the rest -> indices):

    side_layers.bin   u8 bits | u16 n_layers | per layer: u8 len + name | u8 ndim + u32 dims
    codebook.bin      per layer: 2^b float32 centroids
    indices.bin       per layer: indices packed LSB-first at b bits (ceil(n*b/8) bytes)

    encode --layer-weights W.pt --layers L.json --out DIR [--bits 3] [--max-iter 300]
    decode --payload DIR --out D.pt
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch


def pack(q, bits):
    planes = ((q[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1)).tobytes()


def unpack(buf, n, bits):
    planes = np.unpackbits(np.frombuffer(buf, np.uint8), count=n * bits).reshape(n, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(1)


def kmeans1d(x, k, max_iter):
    """Lloyd on sorted values: cluster j is the run between consecutive centroid midpoints."""
    xs = np.sort(x.astype(np.float64))
    c = np.linspace(xs[0], xs[-1], k) if k > 1 else np.array([0.5 * (xs[0] + xs[-1])])
    cs = np.concatenate([[0.0], np.cumsum(xs)])
    ends = None
    for _ in range(max_iter):
        mids = 0.5 * (c[:-1] + c[1:])
        e = np.concatenate([np.searchsorted(xs, mids, side="right"), [len(xs)]])
        if ends is not None and np.array_equal(e, ends):
            break
        ends = e
        starts = np.concatenate([[0], e[:-1]])
        cnt = e - starts
        sums = cs[e] - cs[starts]
        c = np.where(cnt > 0, sums / np.maximum(cnt, 1), c)  # an empty cluster keeps its centroid
    return c.astype(np.float32)


def encode(a):
    sd = torch.load(a.layer_weights, map_location="cpu")
    layers = json.load(open(a.layers))
    k = 1 << a.bits
    side = bytearray(struct.pack("<BH", a.bits, len(layers)))
    book, idx = bytearray(), bytearray()
    for l in layers:
        w = sd[l["weight"]].float()
        x = w.flatten().numpy()
        c = kmeans1d(x, k, a.max_iter)
        # nearest centroid (ties to the lower one), centroids sorted
        mids = 0.5 * (c[:-1].astype(np.float64) + c[1:])
        q = np.searchsorted(mids, x.astype(np.float64), side="left").astype(np.int64)
        name = l["weight"].encode()
        side += struct.pack("<B", len(name)) + name + struct.pack("<B", w.dim()) + struct.pack(f"<{w.dim()}I", *w.shape)
        book += c.astype("<f4").tobytes()
        idx += pack(q, a.bits)
    for fname, data in (("side_layers.bin", side), ("codebook.bin", book), ("indices.bin", idx)):
        with open(os.path.join(a.out, fname), "wb") as f:
            f.write(bytes(data))


def decode(a):
    want = ["codebook.bin", "indices.bin", "side_layers.bin"]
    if sorted(os.listdir(a.payload)) != want:
        sys.exit(f"kmeans_pack.py: expected {want} in the payload folder, found {sorted(os.listdir(a.payload))}")
    side, book, idx = (open(os.path.join(a.payload, f), "rb").read() for f in ("side_layers.bin", "codebook.bin", "indices.bin"))
    p = 0

    def take(buf, pos, n, what):
        if pos + n > len(buf):
            sys.exit(f"kmeans_pack.py: {what} is truncated")
        return buf[pos:pos + n], pos + n

    bits, n_layers = struct.unpack("<BH", side[:3])
    p, pb, pi = 3, 0, 0
    k = 1 << bits
    out = {}
    for _ in range(n_layers):
        b, p = take(side, p, 1, "side_layers.bin")
        name, p = take(side, p, b[0], "side_layers.bin")
        b, p = take(side, p, 1, "side_layers.bin")
        dims, p = take(side, p, 4 * b[0], "side_layers.bin")
        shape = struct.unpack(f"<{b[0]}I", dims)
        n = int(np.prod(shape))
        c, pb = take(book, pb, 4 * k, "codebook.bin")
        q, pi = take(idx, pi, (n * bits + 7) // 8, "indices.bin")
        cent = torch.from_numpy(np.frombuffer(c, "<f4").copy())
        out[name.decode()] = cent[torch.from_numpy(unpack(q, n, bits))].reshape(shape).contiguous()
    if p != len(side) or pb != len(book) or pi != len(idx):
        sys.exit("kmeans_pack.py: trailing bytes in the payload")
    torch.save(out, a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--layer-weights", required=True)
    e.add_argument("--layers", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--bits", type=int, default=3)
    e.add_argument("--max-iter", type=int, default=300)
    d = sub.add_parser("decode")
    d.add_argument("--payload", required=True)
    d.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    encode(a) if a.cmd == "encode" else decode(a)


if __name__ == "__main__":
    main()
