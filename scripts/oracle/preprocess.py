#!/usr/bin/python3
"""Test oracle: torchvision/PIL preprocessing of the images bitbench preprocesses, for the
[data] parity tests.

imagenet:  preprocess.py imagenet --list FILE --out FILE
cifar:     preprocess.py cifar --list FILE --out FILE
           FILE lists one image path per line. For image i (line order) the output dict holds
             "<i>.rgb"     PIL Image.open(path).convert("RGB") as uint8 H x W x 3 (raw decode)
             "<i>.tensor"  the torchvision transform of that PIL image, float32 3 x H x W:
                           imagenet: Resize(256) + CenterCrop(224) + ToTensor + Normalize
                           cifar:    ToTensor + Normalize (what the akamaster models expect)
mnist:     preprocess.py mnist --images IDX --count N --out FILE
             "<i>.tensor"  Resize((32, 32)) + ToTensor of image i as a PIL 'L' image, 1 x 32 x 32
The output is torch.save'd as a plain dict of tensors (bitbench's read_state_dict reads it).
"""
import argparse

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["imagenet", "cifar", "mnist"])
    p.add_argument("--list")
    p.add_argument("--images")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = {}
    if a.kind == "mnist":
        raw = np.fromfile(a.images, dtype=np.uint8)
        n, rows, cols = (int.from_bytes(raw[o:o + 4].tobytes(), "big") for o in (4, 8, 12))
        imgs = raw[16:].reshape(n, rows, cols)
        tf = T.Compose([T.Resize((32, 32)), T.ToTensor()])
        for i in range(min(n, a.count) if a.count else n):
            out[f"{i}.tensor"] = tf(Image.fromarray(imgs[i], mode="L"))
    else:
        if a.kind == "imagenet":
            tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
        else:
            tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
        with open(a.list) as f:
            paths = [line.rstrip("\n") for line in f if line.strip()]
        for i, path in enumerate(paths):
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            out[f"{i}.rgb"] = torch.from_numpy(np.array(rgb, dtype=np.uint8))
            out[f"{i}.tensor"] = tf(rgb)
    torch.save(out, a.out)


if __name__ == "__main__":
    main()
