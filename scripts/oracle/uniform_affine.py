#!/usr/bin/env python3
"""Oracle for `uniform scheme=asymmetric clip=minmax`: PyTorch's per-channel affine fake
quantization (PerChannelMinMaxObserver, quant range [0, 2^b - 1]) of every conv/linear weight of a
plain-dict checkpoint, compared with bitbench's decoded weights. Prints the largest absolute
difference and the number of weights that differ by more than 1e-6 of their channel's step."""
import argparse
import torch
from torch.ao.quantization.observer import PerChannelMinMaxObserver

ap = argparse.ArgumentParser()
ap.add_argument("--weights", required=True)  # original plain dict
ap.add_argument("--decoded", required=True)  # bitbench decompress output
ap.add_argument("--bits", type=int, required=True)
a = ap.parse_args()
orig = torch.load(a.weights, map_location="cpu")
dec = torch.load(a.decoded, map_location="cpu")
worst, bad, n = 0.0, 0, 0
for k, w in orig.items():
    if not k.endswith(".weight") or w.dim() not in (2, 4):
        continue
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                                   quant_min=0, quant_max=(1 << a.bits) - 1)
    obs(w.float())
    scale, zp = obs.calculate_qparams()
    ref = torch.fake_quantize_per_channel_affine(w.float(), scale.float(), zp.int(), 0, 0, (1 << a.bits) - 1)
    d = (dec[k].float() - ref).abs()
    tol = 1e-6 * scale.float().view(-1, *([1] * (w.dim() - 1)))
    bad += int((d > tol).sum())
    worst = max(worst, float(d.max()))
    n += 1
print(f"layers {n} worst {worst:.3g} differing {bad}")
