"""Where the SSL classifier's activations and gradients grow: the first steps of fine-tuning
from scratch under the default recipe's optimiser (SGD, Nesterov, the learning rate at batch
16, no warm-up), with the paper's sum pooling and with the library's mean pooling:

    python experiments/study/activations.py DATA.pkl SPLIT [--steps 40] [--every 5]
        [--clip-len 32] [--lr 0.0125] [--threads 1]
        [--variant paper pooling=sum,joint_embedding=false] [--variant default]

Each line: a step, then for each STRL layer the mean |value| of the encoder copy's output
(G_E(H)), the pooled interaction (SP of Eq. 3), the spatial update's output (Eq. 4) and the
layer's output (after the temporal module), the largest |output|, the fraction of the layer's
outputs that are zero (dead ReLUs), and the norm of the layer's parameter gradients. The
training batches are the default training pipeline's (augmentation included), the same for
each variant."""

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from study import parse_settings  # noqa: E402

import skelmae_reference  # noqa: E402
from skelmae_ext.data import SkeletonDataset, default_pipeline, load_annotations, make_loader  # noqa: E402

PARTS = ("spatial", "pooled", "update", "out")


def watch(layer, record):
    """Records the mean |value| of each part of ``layer``'s forward into ``record``."""
    def keep(name):
        return lambda value: record.__setitem__(name, value.detach().abs().mean().item())

    pool, update = layer.pool, layer.spatial_update
    layer.encoder.register_forward_hook(lambda module, args, out: keep("spatial")(out))
    layer.pool = lambda *args: _tap(pool(*args), keep("pooled"))
    layer.spatial_update = lambda *args: _tap(update(*args), keep("update"))

    def out_hook(module, args, out):
        keep("out")(out)
        record["max"] = out.detach().abs().max().item()
        record["dead"] = (out == 0).float().mean().item()
    layer.register_forward_hook(out_hook)


def _tap(value, keep):
    keep(value)
    return value


def run(variant, settings, loader, num_classes, args):
    torch.manual_seed(0)
    model = skelmae_reference.SSLClassifier(num_classes, layout="coco", num_frames=args.clip_len, num_persons=1,
                                            **settings)
    records = [dict() for _ in model.strl.layers]
    for layer, record in zip(model.strl.layers, records):
        watch(layer, record)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=1e-3)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    print(f"\n{variant} ({', '.join(f'{k}={v}' for k, v in settings.items()) or 'the library defaults'})")
    print("step   loss  " + "  ".join(f"layer {i}: spatial/pooled/update/out max dead grad" for i in range(len(records))))
    step = 0
    while step < args.steps:
        for x, y in loader:
            loss = criterion(model(x.flatten(0, 1)), y)  # [N, clips = 1, M, T, V, C]
            optimizer.zero_grad()
            loss.backward()
            grads = [math.sqrt(sum(p.grad.pow(2).sum().item() for p in layer.parameters() if p.grad is not None))
                     for layer in model.strl.layers]
            optimizer.step()
            step += 1
            if step == 1 or step % args.every == 0 or not math.isfinite(loss.item()):
                cells = ["/".join(f"{r[p]:.3g}" for p in PARTS) + f" {r['max']:.3g} {r['dead']:.2f} {g:.3g}"
                         for r, g in zip(records, grads)]
                print(f"{step:4d} {loss.item():6.3f}  " + "  ".join(cells))
            if step >= args.steps or not math.isfinite(loss.item()):
                return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("split")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--clip-len", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.0125)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                        help="a name and model arguments, comma-separated (default: paper and default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = args.variant or [["paper", "pooling=sum,joint_embedding=false"], ["default"]]
    data = load_annotations(args.data)
    pipeline = default_pipeline("train", args.clip_len, num_person=1)
    dataset = SkeletonDataset(data, args.split, pipeline, seed=0)
    dataset.set_epoch(0)
    for name, *settings in variants:
        loader = make_loader(dataset, 16, workers=0, drop_last=True)
        run(name, parse_settings(",".join(settings).split(",") if settings else []), loader,
            dataset.num_classes, args)


if __name__ == "__main__":
    main()
