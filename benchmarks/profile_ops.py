"""Where the time goes: one implementation's row of bench.py under torch.profiler, as a table of operators.

Builds the same model and step as bench.py (same architecture, same inputs, same optimizer), runs a few
warm-up steps, then profiles `--steps` steps and writes the operator table sorted by device time (CUDA) or
CPU time (CPU), plus a one-line summary: wall time per step, device time per step, and operator calls per
step and kernel launches per step (what bounds batch-1 latency on a GPU).

    python benchmarks/profile_ops.py --device cuda --dtype bf16 --task train --batch 128 --impls ours,timm --out prof
    python benchmarks/profile_ops.py --device cpu --task infer --batch 8 --impls ours,transformers
    python benchmarks/profile_ops.py --device cpu --dtype fp32 --mode compile --batch 8 --impls ours
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import bench  # (this folder's benchmark: the same models, rows and steps)

BUILDERS = {
    "ours": bench.build_ours,
    "transformers": bench.build_transformers,
    "timm": bench.build_timm,
    "torchvision": bench.build_torchvision,
}


def profile_row(impl: str, row: bench.Row, steps: int, rows_shown: int) -> tuple[str, str]:
    """(summary line, operator table) of `steps` profiled steps of one implementation."""
    torch.manual_seed(0)
    model = BUILDERS[impl]().to(row.device)
    compiled = torch.compile(model, mode=bench.COMPILE_MODES[row.mode]) if row.mode in bench.COMPILE_MODES else None
    step = bench.make_step(impl, model, row, compiled)
    for _ in range(3):  # caches, cuDNN/cuBLAS heuristics, the allocator's pools
        bench.timed(step, row.device)
    wall = min(bench.timed(step, row.device) for _ in range(3))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if row.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        bench.sync(row.device)
    events = prof.key_averages()
    on_device = row.device == "cuda"
    sort = "self_cuda_time_total" if on_device else "self_cpu_time_total"
    # kernels only: an operator's own device time is the sum of its kernels', counted again otherwise
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    device_us = sum(e.self_device_time_total for e in kernels) / steps
    calls = sum(e.count for e in events if e.key.startswith("aten::")) / steps
    launches = sum(e.count for e in events if "LaunchKernel" in e.key) / steps
    summary = (
        f"{impl} {row.name}: wall {1000 * wall:.2f} ms/step, device busy {device_us / 1000:.2f} ms/step, "
        f"{calls:.0f} aten calls/step, {launches:.0f} kernel launches/step"
    )
    return summary, events.table(sort_by=sort, row_limit=rows_shown, max_name_column_width=60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(bench.DTYPES))
    p.add_argument("--task", default="infer", choices=["infer", "train"])
    p.add_argument("--mode", default="eager", choices=["eager", "compile"], help="eager, or torch.compile")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--impls", default="ours", help="comma-separated: ours, transformers, timm, torchvision")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--rows", type=int, default=30, help="operators shown")
    p.add_argument("--out", default="", help="folder for one table per implementation (default: print)")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    row = bench.Row(args.device, args.dtype, args.task, args.mode, args.batch)
    for impl in args.impls.split(","):
        t0 = time.perf_counter()
        summary, table = profile_row(impl, row, args.steps, args.rows)
        print(f"# {summary} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.out:
            name = f"{impl}_{args.device}_{args.dtype}_{args.task}_b{args.batch}.txt"
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / name).write_text(f"{summary}\n\n{table}\n")
        else:
            print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
