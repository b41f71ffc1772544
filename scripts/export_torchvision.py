#!/usr/bin/python3
"""Exports a torchvision classification model's pretrained weights in the format bitbench reads:
a torch.save'd plain dict {name: tensor} (torch.save(dict(model.state_dict()), path)).

    export_torchvision.py resnet18 resnet18.pt                      # the model's DEFAULT weights
    export_torchvision.py vgg16_bn vgg16_bn.pt --weights IMAGENET1K_V1
    export_torchvision.py resnet50 resnet50.pt --checkpoint resnet50-0676ba61.pth   # offline
    export_torchvision.py --list                                    # models and their weights

Without --checkpoint the weights are downloaded by torchvision (needs internet; cached under
$TORCH_HOME). --checkpoint converts an already downloaded torchvision .pth file instead
(an OrderedDict, possibly with a "module." prefix from DataParallel or wrapped in
{"state_dict": ...}). Either way the dict is loaded strictly into torchvision's architecture before
it is written, so a file that this script writes is known to fit the model.

bitbench's ImageNet architectures: resnet18, resnet34, resnet50, vgg11, vgg11_bn, vgg16, vgg16_bn.
Any other classification model exports too, for use elsewhere.
"""
import argparse
import os
import sys

import torch
import torchvision
from torchvision import models


def classification_models():
    try:
        return sorted(models.list_models(module=models))
    except TypeError:  # older torchvision: list_models() takes no module
        return sorted(models.list_models())


def from_checkpoint(path):
    obj = torch.load(path, map_location="cpu")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        sys.exit(f"export_torchvision.py: '{path}' holds a {type(obj).__name__}, not a state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="torchvision model name, e.g. resnet18")
    p.add_argument("out", nargs="?", help="output file (.pt)")
    p.add_argument("--weights", default="DEFAULT", help="weights enum name (default: DEFAULT)")
    p.add_argument("--checkpoint", help="convert this downloaded .pth instead of downloading")
    p.add_argument("--list", action="store_true", help="list classification models and weights")
    a = p.parse_args()

    if a.list:
        for name in classification_models():
            print(name, " ".join(w.name for w in models.get_model_weights(name)))
        return
    if not a.model or not a.out:
        p.error("give a model name and an output file (or --list)")
    if a.model not in classification_models():
        sys.exit(f"export_torchvision.py: '{a.model}' is not a torchvision classification model (see --list)")

    if a.checkpoint:
        model = models.get_model(a.model, weights=None)
        sd = from_checkpoint(a.checkpoint)
        model.load_state_dict(sd, strict=True)
        source = a.checkpoint
    else:
        enum = models.get_model_weights(a.model)
        try:
            w = enum[a.weights] if a.weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            sys.exit(f"export_torchvision.py: {a.model} has no weights '{a.weights}' "
                     f"(has: {', '.join(x.name for x in enum)})")
        model = models.get_model(a.model, weights=w)
        source = w.url
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = a.out + ".tmp"
    torch.save(sd, tmp)
    os.replace(tmp, a.out)
    n = sum(v.numel() for v in sd.values() if v.is_floating_point())
    print(f"{a.model}: {len(sd)} tensors, {n:,} float values from {source} -> {a.out} "
          f"(torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
