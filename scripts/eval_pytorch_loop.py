#!/usr/bin/python3
"""The PyTorch side of bench/eval_vs_pytorch.sh: the evaluation loop a PyTorch user would write
(torchvision ImageFolder + transforms, DataLoader with worker processes), on the same images, with
the same model, weights, batch size and thread counts as `bitbench eval`. Prints one JSON object:
{"n", "top1", "top5", "seconds", "images_per_s"}; the timed part is the loop over the DataLoader
(worker start-up included), as bitbench times its batch loop.

    eval_pytorch_loop.py --model cifar_resnet20 --weights W.pt --data DIR --kind cifar-folder
    eval_pytorch_loop.py --model resnet18 --weights W.pt --data DIR --kind imagenet-folder
    eval_pytorch_loop.py --model cifar_resnet56 --weights W.pt --data FILE.bin --kind cifar-binary
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CifarBlock(nn.Module):
    """Basic block with the parameter-free option-A shortcut (the akamaster layout)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout // 4 if (stride != 1 or cin != cout) else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, depth):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, planes in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                blocks.append(CifarBlock(cin, planes, 2 if (s > 0 and i == 0) else 1))
                cin = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class CifarBinary(torch.utils.data.Dataset):
    """CIFAR-10 binary records (label byte + R, G, B planes), read per item like torchvision's
    CIFAR10 (numpy HWC -> PIL image -> transform)."""

    def __init__(self, path, transform):
        self.raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3073)
        self.transform = transform

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, i):
        rec = self.raw[i]
        img = Image.fromarray(np.ascontiguousarray(rec[1:].reshape(3, 32, 32).transpose(1, 2, 0)))
        return self.transform(img), int(rec[0])


def make_model(name):
    if name.startswith("cifar_resnet"):
        return CifarResNet(int(name[len("cifar_resnet"):]))
    return torchvision.models.get_model(name, weights=None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--kind", required=True, choices=["cifar-folder", "imagenet-folder", "cifar-binary"])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    if a.kind == "imagenet-folder":
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    else:
        tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    if a.kind == "cifar-binary":
        ds = CifarBinary(a.data, tf)
    else:
        ds = torchvision.datasets.ImageFolder(a.data, transform=tf)
        if a.kind == "imagenet-folder":
            # Class index = position in the sorted 1000 wnids, as bitbench does via synsets.tsv.
            syn = os.path.join(os.path.dirname(os.path.abspath(a.data)), "synsets.tsv")
            wnids = [line.split("\t")[1] for line in open(syn) if line.strip()]
            idx = {w: i for i, w in enumerate(wnids)}
            ds.samples = [(path, idx[ds.classes[y]]) for path, y in ds.samples]
    if a.limit:
        ds = torch.utils.data.Subset(ds, range(min(a.limit, len(ds))))
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=False, num_workers=a.workers)

    model = make_model(a.model)
    missing, unexpected = model.load_state_dict(torch.load(a.weights), strict=False)
    # akamaster's files omit BN's num_batches_tracked (unused in evaluation); nothing else may differ.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"eval_pytorch_loop.py: weights do not fit {a.model}: missing {missing}, extra {unexpected}")
    model.eval()

    n = c1 = c5 = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in loader:
            top5 = model(x).topk(5, 1).indices
            hit = top5.eq(y.unsqueeze(1))
            c1 += int(hit[:, 0].sum())
            c5 += int(hit.any(1).sum())
            n += len(y)
    dt = time.perf_counter() - t0
    print(json.dumps({"n": n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "seconds": dt,
                      "images_per_s": n / dt, "threads": a.threads, "workers": a.workers}))


if __name__ == "__main__":
    main()
