#!/usr/bin/python3
"""An external bitbench method (docs/ADDING_A_METHOD.md, "An external method"): per-output-channel
uniform quantization at b bits, 2^b levels spanning each channel's [min, max] with a float offset
(bitbench's built-in `uniform scheme=asymmetric zero_point=float clip=minmax`, the same float32
arithmetic), the levels bit-packed and the whole payload zlib-compressed into one file.

    encode --weights W.pt --layers L.json --out DIR [--bits 4]   writes DIR/payload.zlib
    decode --payload DIR --out D.pt                              writes {"<layer>.weight": tensor}

payload (before zlib): u8 bits | u16 n_layers | per layer: u8 len + name | u8 ndim + u32 dims |
f32 lo[rows] | f32 step[rows] | levels packed LSB-first at `bits` bits each (ceil(n*bits/8) bytes).
Run through bitbench:
    bitbench compress --method external \
      --set encode="python3 examples/external/uniform_zlib.py encode --weights {weights} --layers {layers} --out {out} --bits 4" \
      --set decode="python3 examples/external/uniform_zlib.py decode --payload {payload} --out {out}" ...
"""
import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch


def pack(q, bits):
    planes = ((q[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1)).tobytes()


def unpack(buf, n, bits):
    planes = np.unpackbits(np.frombuffer(buf, np.uint8), count=n * bits).reshape(n, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(1)


def encode(a):
    sd = torch.load(a.weights, map_location="cpu")
    layers = json.load(open(a.layers))
    qmax = float((1 << a.bits) - 1)
    out = bytearray(struct.pack("<BH", a.bits, len(layers)))
    for l in layers:
        w = sd[l["weight"]].float()
        rows = w.shape[0]
        w2 = w.reshape(rows, -1)
        lo, hi = w2.amin(1), w2.amax(1)
        step = ((hi - lo) / qmax).clamp_min(1e-12)
        q = torch.clamp(torch.round((w2 - lo.unsqueeze(1)) / step.unsqueeze(1)), 0.0, qmax)
        name = l["weight"].encode()
        out += struct.pack("<B", len(name)) + name
        out += struct.pack("<B", w.dim()) + struct.pack(f"<{w.dim()}I", *w.shape)
        out += lo.numpy().astype("<f4").tobytes() + step.numpy().astype("<f4").tobytes()
        out += pack(q.to(torch.int64).flatten().numpy(), a.bits)
    with open(os.path.join(a.out, "payload.zlib"), "wb") as f:
        f.write(zlib.compress(bytes(out), 9))


class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, n):
        if self.p + n > len(self.b):
            sys.exit("uniform_zlib.py: payload is truncated")
        r = self.b[self.p:self.p + n]
        self.p += n
        return r

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def decode(a):
    files = sorted(os.listdir(a.payload))
    if files != ["payload.zlib"]:
        sys.exit(f"uniform_zlib.py: expected exactly payload.zlib in the payload folder, found {files}")
    d = zlib.decompressobj()
    raw = d.decompress(open(os.path.join(a.payload, "payload.zlib"), "rb").read())
    if not d.eof or d.unused_data:
        sys.exit("uniform_zlib.py: payload.zlib is truncated or has trailing bytes")
    r = Reader(raw)
    bits, n_layers = r.unpack("<BH")
    if not 1 <= bits <= 16:
        sys.exit(f"uniform_zlib.py: bad bit width {bits}")
    out = {}
    for _ in range(n_layers):
        (ln,) = r.unpack("<B")
        name = r.take(ln).decode()
        (nd,) = r.unpack("<B")
        shape = r.unpack(f"<{nd}I")
        rows, n = shape[0], int(np.prod(shape))
        lo = torch.from_numpy(np.frombuffer(r.take(4 * rows), "<f4").copy())
        step = torch.from_numpy(np.frombuffer(r.take(4 * rows), "<f4").copy())
        q = torch.from_numpy(unpack(r.take((n * bits + 7) // 8), n, bits)).float().reshape(rows, -1)
        out[name] = (lo.unsqueeze(1) + q * step.unsqueeze(1)).reshape(shape).contiguous()
    if r.p != len(raw):
        sys.exit("uniform_zlib.py: trailing bytes after the last layer")
    torch.save(out, a.out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--weights", required=True)
    e.add_argument("--layers", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--bits", type=int, default=4)
    d = sub.add_parser("decode")
    d.add_argument("--payload", required=True)
    d.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    encode(a) if a.cmd == "encode" else decode(a)


if __name__ == "__main__":
    main()
