#!/usr/bin/python3
"""Independent check of an `external`-method .bbz (issue 22), without bitbench's decoder:

  1. parses the .bbz in Python (docs/FORMAT.md: header, layer records, stored tensors, CRC-32),
  2. splits each record's bytes into payload (its sections = the encode command's files) and the
     container's own record header, and checks payload + headers == the records' bytes, i.e.
     bpw_core * n_weights / 8 of the run record,
  3. writes the payload files to a fresh folder and runs the decode command stored in the file's
     provenance itself (/bin/sh -c), then
  4. evaluates the decoded conv/linear weights plus the stored tensors (BN, biases) in the
     akamaster-layout CIFAR ResNet of scripts/eval_pytorch_loop.py on CIFAR-10's lossless 1k
     binary, and prints its top-1 beside the run record's.

    external_demo_check.py F.bbz [--record RUN.json] [--data ../shared/data/cifar10/test_lossless_1k.bin] [--limit N]
Prints one JSON object per file. Exit 1 when the bytes do not add up or the top-1 differs by more
than --tol points (default 0.1, one image of 1,000).
"""
import argparse
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, n):
        assert self.p + n <= len(self.b), "truncated"
        r = self.b[self.p:self.p + n]
        self.p += n
        return r

    def u8(self):
        return self.take(1)[0]

    def fmt(self, f):
        return struct.unpack(f, self.take(struct.calcsize(f)))[0]

    def varint(self):
        v, s = 0, 0
        while True:
            c = self.u8()
            v |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return v

    def str(self):
        return self.take(self.varint()).decode()

    def shape(self):
        return [self.varint() for _ in range(self.varint())]


def parse_bbz(path):
    b = open(path, "rb").read()
    assert b[:4] == b"BBZ\0", "not a .bbz"
    assert struct.unpack("<I", b[-4:])[0] == zlib.crc32(b[:-4]) & 0xFFFFFFFF, "CRC mismatch"
    r = Reader(b[:-4])
    r.take(4)
    version, size = r.fmt("<I"), r.fmt("<Q")
    assert size == len(b)
    model, prov = r.str(), json.loads(r.str())
    n_layers, n_tensors = r.varint(), r.varint()
    records, tensors = [], {}
    for _ in range(n_layers):
        start = r.p
        rec = {"layer": r.str(), "method": r.str(), "shape": r.shape()}
        r.take(5 * 8)  # the method's size estimate
        rec["sections"] = []
        for _ in range(r.varint()):
            name, comp = r.str(), r.u8()
            rec["sections"].append((name, comp, r.take(r.varint())))
        rec["bytes"] = r.p - start
        records.append(rec)
    for _ in range(n_tensors):
        name, dt = r.str(), r.u8()
        shape = r.shape()
        n = int(np.prod(shape)) if shape else 1
        dtype, size = {0: ("<f4", 4), 1: ("<f2", 2), 2: ("<i8", 8)}[dt]
        a = np.frombuffer(r.take(n * size), dtype).reshape(shape)
        tensors[name] = torch.from_numpy(a.astype(np.float32) if dt == 1 else a.copy())
    assert r.p == len(r.b), "unparsed bytes"
    return model, prov, records, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bbz")
    ap.add_argument("--record", help="the run record (.json) beside the .bbz (default: same name)")
    ap.add_argument("--data", default=os.path.join(HERE, "../../../shared/data/cifar10/test_lossless_1k.bin"))
    ap.add_argument("--tol", type=float, default=0.1)
    ap.add_argument("--limit", type=int, default=0, help="evaluate the first N images only (as bitbench --limit)")
    a = ap.parse_args()
    rec_path = a.record or a.bbz[: -len(".bbz")] + ".json"
    run = json.load(open(rec_path))
    model, prov, records, stored = parse_bbz(a.bbz)
    assert prov["method"] == "external", f"{a.bbz} is not a file of the external method"

    payload = sum(len(s[2]) for r in records for s in r["sections"])
    record_bytes = sum(r["bytes"] for r in records)
    header = record_bytes - payload
    n_weights = run["n_weights"]
    bytes_from_record = run["bpw_core"] * n_weights / 8

    tmp = tempfile.mkdtemp(prefix="bb-external-check-")
    try:
        os.mkdir(os.path.join(tmp, "payload"))
        for r in records:
            for name, _, data in r["sections"]:
                with open(os.path.join(tmp, "payload", name), "wb") as f:
                    f.write(data)
        out = os.path.join(tmp, "decoded.pt")
        cmd = prov["params"]["decode"].replace("{payload}", os.path.join(tmp, "payload")).replace("{out}", out)
        subprocess.run(["/bin/sh", "-c", cmd], check=True)
        decoded = torch.load(out)
    finally:
        shutil.rmtree(tmp)

    spec = importlib.util.spec_from_file_location("eval_loop", os.path.join(HERE, "..", "eval_pytorch_loop.py"))
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    net = ev.make_model(model)
    sd = dict(stored)
    for r in records:
        sd[r["layer"] + ".weight"] = decoded[r["layer"] + ".weight"].float()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    net.eval()
    from torchvision import transforms as T
    ds = ev.CifarBinary(a.data, T.Compose([T.ToTensor(), T.Normalize(ev.MEAN, ev.STD)]))
    if a.limit:
        ds = torch.utils.data.Subset(ds, range(min(a.limit, len(ds))))
    loader = torch.utils.data.DataLoader(ds, batch_size=100, shuffle=False)
    c1 = n = 0
    with torch.no_grad():
        for x, y in loader:
            c1 += int((net(x).argmax(1) == y).sum())
            n += len(y)
    top1 = 100.0 * c1 / n
    bitbench_top1 = run["eval"]["cifar10-lossless-1k"]["top1"]
    res = {"bbz": a.bbz, "label": run.get("label"), "payload_bytes": payload, "record_header_bytes": header,
           "records": len(records), "record_bytes": record_bytes, "bpw_core_bytes": bytes_from_record,
           "python_top1_lossless_1k": top1, "bitbench_top1_lossless_1k": bitbench_top1, "n": n}
    print(json.dumps(res))
    ok = abs(bytes_from_record - record_bytes) < 1e-6 * record_bytes and abs(top1 - bitbench_top1) <= a.tol + 1e-9
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
