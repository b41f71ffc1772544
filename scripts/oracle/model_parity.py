#!/usr/bin/python3
"""Test oracle: torchvision reference logits for bitbench's model parity tests.

make:  model_parity.py make --arch resnet18 --out DIR [--seed 0] [--batch 2] [--size 224]
       Builds torchvision.models.<arch>() with a fixed seed, replaces every BatchNorm's affine
       parameters and running statistics with random values (so BN is really exercised in eval
       mode), and writes into DIR:
         weights.pt  dict(model.state_dict())  (the plain-dict format bitbench reads)
         io.pt       {"input": N x 3 x size x size, "logits": N x 1000}
load:  model_parity.py load --arch resnet18 --weights FILE --input FILE --out FILE
       torch.load's a weights file (e.g. one bitbench's write_state_dict wrote), checks that it is
       a plain dict of tensors, loads it into torchvision's model strictly, runs it on
       input["input"] and writes {"logits", "input"} to FILE.

Only the test suite runs this (with Debian's /usr/bin/python3); bitbench itself never calls Python.
"""
import argparse
import sys

import torch
import torchvision


def build(arch):
    if not hasattr(torchvision.models, arch):
        sys.exit(f"model_parity.py: torchvision has no model '{arch}'")
    return getattr(torchvision.models, arch)()


def randomise_bn(model, gen, size):
    """Random BN affine parameters and running statistics measured on random inputs (then
    perturbed), so eval-mode BN is a non-trivial per-channel affine map while activations keep
    the scale of a trained network (logits of order 1-10, where an absolute 1e-4 bound means
    something)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        # Half resolution is enough for statistics and halves the oracle's run time.
        model(torch.randn(4, 3, size // 2, size // 2, generator=gen))
        for m in bns:
            c = m.num_features
            m.running_mean.add_(torch.randn(c, generator=gen) * 0.05)
            m.running_var.mul_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
            m.momentum = 0.1
    model.eval()


def cmd_make(a):
    torch.manual_seed(a.seed)
    model = build(a.arch)
    randomise_bn(model, torch.Generator().manual_seed(a.seed + 1), a.size)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(a.seed + 2))
    with torch.no_grad():
        y = model(x)
    torch.save(dict(model.state_dict()), f"{a.out}/weights.pt")
    torch.save({"input": x, "logits": y}, f"{a.out}/io.pt")
    print(f"{a.arch}: logits abs max {y.abs().max().item():.4g}, std {y.std().item():.4g}")


def cmd_load(a):
    sd = torch.load(a.weights)
    if type(sd) is not dict:
        sys.exit(f"model_parity.py: '{a.weights}' holds a {type(sd).__name__}, expected a plain dict")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            sys.exit(f"model_parity.py: '{a.weights}': entry {k!r} is not a str -> tensor pair")
    model = build(a.arch)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.load(a.input)["input"]
    with torch.no_grad():
        y = model(x)
    # Two entries: libtorch's unpickler cannot read a one-entry dict (pickle's SETITEM opcode).
    torch.save({"logits": y, "input": x}, a.out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--arch", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--batch", type=int, default=2)
    m.add_argument("--size", type=int, default=224)
    l = sub.add_parser("load")
    l.add_argument("--arch", required=True)
    l.add_argument("--weights", required=True)
    l.add_argument("--input", required=True)
    l.add_argument("--out", required=True)
    a = p.parse_args()
    cmd_make(a) if a.cmd == "make" else cmd_load(a)


if __name__ == "__main__":
    main()
