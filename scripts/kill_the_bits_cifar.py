#!/usr/bin/python3
"""Run the official "And the Bit Goes Down" code (facebookresearch/kill-the-bits, its src/quantize.py
unmodified) on a CIFAR ResNet, on the CPU, with the images bitbench uses, so that `bitbench compress
--method pq` can be compared with it on the same data (docs/methods/pq.md, "The official code on the
same data").

The official files are imported from a checkout given with --ktb (not part of this project); this
script only supplies what they leave to the user or assume about the machine:
  - the data: `data.load_data` returns the training loader the official code expects (batch 128,
    shuffled, drop_last) over cifar10-jpeg-train (the 45,000 JPEG-train images outside bitbench's
    validation hold-out, picked by scripts/train_pytorch_loop.py's rule) or, with --train-set all, all
    50,000; augmentation RandomCrop(32, padding=4) + horizontal flip, ImageNet mean/std (the
    pretrained network's normalisation); the official code's own test loader evaluations (after
    every layer) run on the lossless 1k images;
  - the network: `models.resnet18(pretrained=True)` returns cifar_resnet<depth> (the option-A layout
    of scripts/eval_pytorch_loop.py) with the given weights, so `--model resnet18` selects it;
  - the CPU: `.cuda()` returns its argument; the E-step distances ||A (w - c)||^2, which the
    official `ComputeDistances` broadcasts over GPUs, are computed as the quadratic form
    (w - c)^T (A^T A) (w - c) (the same numbers up to float rounding, without the GPU-sized
    intermediate tensors);
  - layer names: the official `dynamic_sampling` knows ImageNet's `fc` but not the CIFAR net's
    `linear`; it gets the `fc` count (5,000);
  - PyTorch >= 1.5: the official `accuracy` calls .view(-1) on a non-contiguous tensor; .reshape here;
  - the official end-of-run save reads `student.fc.bias`, which the CIFAR net does not have: the
    save is skipped (the top-1 below is measured on the network in memory, fp32 codewords).
Everything else (k cap, EM, CentroidSGD, the per-layer and global distillation, learning rates,
weight decay, BN modes) is the official code as it is. Settings: --layer-iters per-layer steps
(official flag --finetune-centroids), --whole-epochs global epochs of one pass over the training
loader (--finetune-whole-epochs; StepLR(3) as official); other official flags pass through.

Prints one JSON object: {"seed", "train_set", "train_images", "seconds" (the official main()),
"val" (cifar10-jpeg-val, for --train-set train), "lossless1k", "jpeg10k"}.

    kill_the_bits_cifar.py --ktb /path/to/kill-the-bits --weights ../shared/data/models/cifar10_resnet20.pt \
        --data ../shared/data --seed 0 --out /tmp/ktb_r20
"""
import argparse
import json
import os
import random
import sys
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision import transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_pytorch_loop import MEAN, STD, CifarBinary, CifarResNet  # noqa: E402
from train_pytorch_loop import jpeg_train_samples  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ktb", required=True, help="a checkout of facebookresearch/kill-the-bits")
    p.add_argument("--weights", required=True)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--train-set", choices=["train", "all"], default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layer-iters", type=int, default=50)
    p.add_argument("--whole-epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True, help="the official --save folder (centroids, assignments)")
    a, passthrough = p.parse_known_args()
    src = os.path.join(a.ktb, "src")
    if not os.path.isfile(os.path.join(src, "quantize.py")):
        sys.exit(f"kill_the_bits_cifar: no src/quantize.py under --ktb {a.ktb}")
    if not os.path.isfile(a.weights):
        sys.exit(f"kill_the_bits_cifar: no weights file {a.weights}")
    sys.path.insert(0, src)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)

    torch.Tensor.cuda = lambda self, *args, **kw: self
    nn.Module.cuda = lambda self, *args, **kw: self

    cifar = os.path.join(a.data, "cifar10")
    tf_train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    tf_test = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    def jpeg_train(split, transform):
        ds = torchvision.datasets.ImageFolder(os.path.join(cifar, "jpeg", "train"), transform=transform)
        if split:  # bitbench's cifar10-jpeg-train / cifar10-jpeg-val; None = all 50,000
            ds.samples = jpeg_train_samples(os.path.join(cifar, "jpeg", "train"), split)
            ds.imgs, ds.targets = ds.samples, [y for _, y in ds.samples]
        return ds

    train = jpeg_train("train" if a.train_set == "train" else None, tf_train)
    val = jpeg_train("val", tf_test) if a.train_set == "train" else None  # the hold-out is inside "all"
    lossless = CifarBinary(os.path.join(cifar, "test_lossless_1k.bin"), tf_test)
    jpeg_test = torchvision.datasets.ImageFolder(os.path.join(cifar, "jpeg", "test"), transform=tf_test)

    def load_data(data_path="", batch_size=128, nb_workers=0):
        g = torch.Generator()
        g.manual_seed(a.seed)
        tr = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=a.workers,
                                         drop_last=True, generator=g)
        te = torch.utils.data.DataLoader(lossless, batch_size=100, shuffle=False, num_workers=0)
        return tr, te

    sys.modules["data"] = types.ModuleType("data")
    sys.modules["data"].load_data = load_data

    made = []

    def cifar_net(pretrained=True):
        m = CifarResNet(a.depth)
        m.load_state_dict(torch.load(a.weights))
        made.append(m)  # the first is the student, the second the teacher
        return m

    sys.modules["models"] = types.ModuleType("models")
    sys.modules["models"].resnet18 = cifar_net
    sys.modules["models"].resnet50 = cifar_net

    import utils.training
    import utils.dynamic_sampling
    import quantization.em

    def accuracy(output, target, topk=(1,)):
        with torch.no_grad():
            pred = output.topk(max(topk), 1, True, True)[1].t()
            correct = pred.eq(target.view(1, -1).expand_as(pred))
            return [correct[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / target.size(0)) for k in topk]

    utils.training.accuracy = accuracy
    official_sampling = utils.dynamic_sampling.dynamic_sampling
    utils.dynamic_sampling.dynamic_sampling = lambda layer: official_sampling("fc" if layer == "linear" else layer)

    class GramDistances:
        """||A (w - c)||_2 for every centroid c (rows) and column w of M, as the official ComputeDistances."""

        def __init__(self, M, centroids):
            self.M, self.centroids = M, centroids

        def update_centroids(self, centroids):
            self.centroids = centroids

        def __call__(self, A):
            G = A.t().mm(A)
            GM = G.mm(self.M)
            C = self.centroids
            d2 = (self.M * GM).sum(0)[None, :] - 2 * C.mm(GM) + (C.mm(G) * C).sum(1)[:, None]
            return d2.clamp_min(0).sqrt()

    quantization.em.ComputeDistances = GramDistances

    os.makedirs(a.out, exist_ok=True)
    sys.argv = ["quantize.py", "--model", "resnet18", "--finetune-centroids", str(a.layer_iters),
                "--finetune-whole-epochs", str(a.whole_epochs), "--save", a.out, "--data-path", cifar] + passthrough
    import quantize
    t0 = time.time()
    try:
        quantize.main()
    except AttributeError as e:
        if "'fc'" not in str(e):
            raise
        print("kill_the_bits_cifar: the official save needs student.fc; skipped", flush=True)
    seconds = time.time() - t0

    student = made[0].eval()

    def top1(ds):
        hits = n = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(ds, batch_size=100, shuffle=False, num_workers=a.workers):
                hits += (student(x).argmax(1) == y).sum().item()
                n += len(y)
        return 100.0 * hits / n

    res = {"seed": a.seed, "train_set": a.train_set, "train_images": len(train.samples), "seconds": round(seconds, 1),
           "val": top1(val) if val is not None else None, "lossless1k": top1(lossless), "jpeg10k": top1(jpeg_test)}
    print(json.dumps(res), flush=True)
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
