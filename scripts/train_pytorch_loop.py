#!/usr/bin/python3
"""The PyTorch side of bench/train_vs_pytorch.sh: the fine-tuning loop a PyTorch user would write
(a Dataset, torchvision transforms, DataLoader with worker processes, SGD), set up as `bitbench
compress --method fp32 --set finetune_epochs=E --set finetune_max_images=N --calib
cifar10-jpeg-train` fine-tunes with fp32's defaults:

  - the same images: cifar10-jpeg-train (the CIFAR-10 JPEG train folder minus bitbench's
    validation hold-out of 500 images per class, picked here with bitbench's rule: FNV-1a of the
    class folder name mixed into seed 0xcafa1500, mt19937_64 Fisher-Yates over the sorted file
    names), then bitbench's sample_indices(45,000, N, seed) draw of N of them; each epoch visits
    them in a shuffled order (DataLoader's shuffle, not bitbench's order: same set, same count);
  - decoded the same way (OpenCV imread, BGR -> RGB), augmented as bitbench does (4-pixel black
    padding, random 32x32 crop, horizontal flip with p = 0.5), then ToTensor + Normalize with the
    ImageNet mean/std;
  - cifar_resnet<depth> (the option-A layout of eval_pytorch_loop.py) with the same weights, BN in
    train mode (fp32's finetune_bn=update), cross-entropy on the labels, SGD (lr 0.001, momentum
    0.9, no weight decay) on every conv/linear weight only: BN affine parameters and the linear
    bias stay fixed, as in bitbench;
  - batch size, intra-op threads (torch.set_num_threads) as given.

Timed: from creating the DataLoader iterator (worker start-up included) to the end of the last
optimizer step, every step included (no warm-up excluded), the way bitbench's `finetune` phase
times its loop (its decode threads start inside the phase too). Not timed: imports, model and
weight loading, listing the folder. Prints one JSON object: {"images", "steps", "seconds",
"images_per_s", "data_wait_s" (time the loop waited for the DataLoader), "step_s" (forward,
backward and optimizer step; of which "forward_s" (forward + loss), "backward_s", "optimizer_s"),
"first_loss", "last_loss", "threads", "workers", "batch_size"}.

    train_pytorch_loop.py --model cifar_resnet20 --weights W.pt --data DATA/cifar10/jpeg/train \
        --images 2048 --epochs 1 --batch-size 128 --threads 2 --workers 2
"""
import argparse
import json
import math
import os
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_pytorch_loop import MEAN, STD, make_model  # noqa: E402

M64 = (1 << 64) - 1


class MT19937_64:
    """std::mt19937_64 (the C++ standard's parameters), for bitbench's image picks."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & M64
        for i in range(1, 312):
            prev = self.mt[i - 1]
            self.mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & M64
        self.i = 312

    def _twist(self):
        mt = self.mt
        for i in range(312):
            x = (mt[i] & 0xFFFFFFFF80000000) | (mt[(i + 1) % 312] & 0x7FFFFFFF)
            xa = x >> 1
            if x & 1:
                xa ^= 0xB5026F5AA96619E9
            mt[i] = mt[(i + 156) % 312] ^ xa
        self.i = 0

    def __call__(self):
        if self.i >= 312:
            self._twist()
        y = self.mt[self.i]
        self.i += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & M64


def mix_seed(seed, index):
    """bitbench's mix_seed (src/common/hash.h)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 0x632BE59BD9B4E019) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


VAL_PER_CLASS, VAL_SEED = 500, 0xCAFA1500  # src/data/datasets.cpp: kCifarValPerClass, kCifarValSeed


def held_mask(n, cls):
    """HoldOut::mask of src/data/datasets.cpp: which of a class folder's n sorted files are held out."""
    h = VAL_SEED
    for c in cls.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    rng = MT19937_64(h)
    order = list(range(n))
    for i in range(n - 1):
        j = i + rng() % (n - i)
        order[i], order[j] = order[j], order[i]
    m = [False] * n
    for k in order[:VAL_PER_CLASS]:
        m[k] = True
    return m


def jpeg_train_samples(root, split):
    """(path, label) of cifar10-jpeg-train (split="train") or cifar10-jpeg-val (split="val"), in
    bitbench's order (sorted class folders, sorted file names)."""
    out = []
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for label, d in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, d))
                       if os.path.splitext(f)[1].lower() in (".jpg", ".jpeg", ".png", ".bmp")
                       and os.path.isfile(os.path.join(root, d, f)))
        held = held_mask(len(files), d)
        out += [(os.path.join(root, d, f), label) for f, h in zip(files, held) if h == (split == "val")]
    return out


def sample_indices(size, n, seed):
    """bitbench's sample_indices (src/data/datasets.cpp): n of range(size), sorted."""
    idx = list(range(size))
    if n >= size:
        return idx
    rng = MT19937_64(mix_seed(seed, 0x5EED))
    for i in range(n):
        j = i + rng() % (size - i)
        idx[i], idx[j] = idx[j], idx[i]
    return sorted(idx[:n])


class CvFolder(torch.utils.data.Dataset):
    """Images decoded as bitbench decodes them (cv2.imread, BGR -> RGB), then the transform."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise RuntimeError(f"cannot read or decode image '{path}'")
        return self.transform(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), label


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True, help="the CIFAR-10 JPEG train folder (DATA/cifar10/jpeg/train)")
    p.add_argument("--images", type=int, default=2048, help="images per epoch (bitbench's finetune_max_images; 0 = all)")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0, help="bitbench's --seed (which N images are drawn)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-augment", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(1)
    torch.manual_seed(a.seed)

    pool = jpeg_train_samples(a.data, "train")
    if a.images > 0:
        pool = [pool[i] for i in sample_indices(len(pool), a.images, a.seed)]
    total = math.ceil(a.epochs * len(pool))  # images trained, as bitbench counts them
    aug = [] if a.no_augment else [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    # ToTensor first: the padding is black before normalisation, as bitbench pads the 8-bit image.
    tf = T.Compose([T.ToTensor()] + aug + [T.Normalize(MEAN, STD)])
    ds = CvFolder(pool, tf)

    model = make_model(a.model)
    missing, unexpected = model.load_state_dict(torch.load(a.weights), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"train_pytorch_loop.py: weights do not fit {a.model}: missing {missing}, extra {unexpected}")
    # bitbench trains every conv/linear weight; BN affine parameters and biases stay fixed.
    params = []
    for m in model.modules():
        for name, t in m.named_parameters(recurse=False):
            train = isinstance(m, (nn.Conv2d, nn.Linear)) and name == "weight"
            t.requires_grad_(train)
            if train:
                params.append(t)
    opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=0)
    model.train()  # BN: batch statistics, running statistics updated (finetune_bn=update)

    losses = []
    done = steps = 0
    wait = fwd = bwd = ostep = 0.0
    t0 = time.perf_counter()
    epoch = 0
    while done < total:
        tw = time.perf_counter()
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                             generator=torch.Generator().manual_seed(a.seed + epoch))
        it = iter(loader)  # starts the workers: counted as waiting for data
        while done < total:
            try:
                x, y = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - tw
            if len(y) > total - done:  # a fractional last epoch ends mid-batch, as bitbench's does
                x, y = x[: total - done], y[: total - done]
            t1 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            losses.append(loss.item())
            t2 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            fwd, bwd, ostep = fwd + t2 - t1, bwd + t3 - t2, ostep + t4 - t3
            done += len(y)
            steps += 1
            tw = time.perf_counter()
        del it, loader
        epoch += 1
    dt = time.perf_counter() - t0
    w = max(1, len(losses) // 10)
    print(json.dumps({"images": done, "steps": steps, "seconds": dt, "images_per_s": done / dt,
                      "data_wait_s": wait, "step_s": dt - wait, "forward_s": fwd, "backward_s": bwd, "optimizer_s": ostep,
                      "first_loss": sum(losses[:w]) / w, "last_loss": sum(losses[-w:]) / w,
                      "threads": a.threads, "workers": a.workers, "batch_size": a.batch_size}))


if __name__ == "__main__":
    main()
