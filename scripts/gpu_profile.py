"""torch.profiler kernel tables for the GPU check: one forward+backward of masked_graph_conv at
the acceptance shape (G16384-V17-C64) and one pre-training step of the twin at N = 128, each
after warm-up, as key_averages() tables sorted by the device time each kernel takes itself.

    python scripts/gpu_profile.py OUT_DIR [--device cuda] [--backend cuda]

Writes OUT_DIR/profile-masked_graph_conv.txt and OUT_DIR/profile-pretraining-step.txt. With
--device cpu it profiles the same code on tiny shapes, sorted by CPU time (the check's dry run
and tests run it that way). The inputs, models and optimiser are the benchmarks' own.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import skelmae_ext  # noqa: E402
from conftest import op_for, synchronize  # noqa: E402
from test_models import build, pretraining_setup  # noqa: E402
from test_ops import graph_conv_inputs, graph_conv_step  # noqa: E402

# (graph shape, pre-training batch) per device: the acceptance sizes, and tiny ones on the CPU.
SIZES = {"cuda": ((16384, 17, 64), 128), "cpu": ((64, 17, 8), 2)}
WARMUP = 3
PROFILED = 5  # steps in each table: its counts are per these steps
ROWS = 30


def op_step(device, backend):
    shape = SIZES[device][0]
    step = graph_conv_step(op_for(backend, "masked_graph_conv"), graph_conv_inputs(*shape, device), "forward+backward")
    return f"masked_graph_conv forward+backward G={shape[0]} V={shape[1]} C={shape[2]}", step


def training_step(device, backend):
    n = SIZES[device][1]
    x, reference, twin_class, loss_of, optimizer_class, optimizer_kwargs = pretraining_setup(n, device)
    model, forward = build(twin_class, backend, reference, device)
    optimizer = optimizer_class(model.parameters(), **optimizer_kwargs)

    def step():
        optimizer.zero_grad()
        loss_of(forward(x)).backward()
        optimizer.step()

    return f"SkeletonMAE pre-training step N={n} M=2 T=64 V=17 D=64 (twin)", step


def kernel_table(step, device):
    """The key_averages() table of PROFILED steps after WARMUP ones."""
    for _ in range(WARMUP):
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(PROFILED):
            step()
        synchronize(device)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort, row_limit=ROWS, max_name_column_width=70)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the tables")
    parser.add_argument("--device", choices=sorted(SIZES), default="cuda")
    parser.add_argument("--backend", help="skelmae_ext backend (default: cuda on a GPU; auto on the CPU, the "
                                           "reference path where a source tree without kernels is imported)")
    args = parser.parse_args(argv)
    backend = args.backend or ("cuda" if args.device == "cuda" else "auto")
    args.out.mkdir(parents=True, exist_ok=True)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    for name, make in (("masked_graph_conv", op_step), ("pretraining-step", training_step)):
        title, step = make(args.device, backend)
        header = (f"{title}, backend {backend}, on {where}; torch {torch.__version__}, skelmae_ext "
                  f"{skelmae_ext.__version__}; {PROFILED} steps after {WARMUP} of warm-up\n\n")
        path = args.out / f"profile-{name}.txt"
        path.write_text(header + kernel_table(step, args.device) + "\n")
        print(f"{path}: {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
