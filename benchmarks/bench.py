"""Speed and memory of swinv2 against transformers, timm and torchvision, measured in one process.

Every implementation builds the same architecture (swinv2-tiny, window 8, 256 px, 1000 classes, no
stochastic depth) with random weights; ours gets the transformers model's weights through our converter
and the two must agree before anything is timed (timm and torchvision too, once `checkpoints` can map
their weights; until then they are compared on speed only, and the table says so).

A row is (device, dtype, task, mode, batch). Within a row the implementations are interleaved: after the
warm-up, repeat r times {ours, transformers, timm, torchvision}, and report the median. Before each sample
the script waits (up to --max-wait seconds) for a quiet machine: the CPU time other processes used is read
from /proc/stat (all CPUs' busy time minus this process's own), and a sample during which others used more
than --busy cores is marked contended; the row shows how many of its samples were.

Peak memory: on CUDA, the peak allocated above what was resident before the call; on CPU, the peak RSS of a
fresh child process that imports only that implementation, builds it and runs the row twice.

    python benchmarks/bench.py --quick                # CPU, fp32 eager inference and training, a few repeats
    python benchmarks/bench.py --device cpu --mode eager,compile --json out.json
    python benchmarks/bench.py --device cuda --dtype bf16 --task infer,train --repeats 5
    python benchmarks/bench.py --device cuda --dtype bf16 --mode cudagraphs --task infer --batch 1

Modes: eager; graphed, the eager forward captured once in a CUDA graph and replayed (`torch.cuda.graph`,
the README's low-latency recipe); compile, `torch.compile` with its default mode; cudagraphs,
`torch.compile(mode="reduce-overhead")`, compiled and replayed as CUDA graphs. graphed and cudagraphs run on
CUDA inference rows only; every implementation gets the same treatment.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("ours", "transformers", "timm", "torchvision")
PEERS = IMPLS[1:]
IMAGE = 256
CLASSES = 1000
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------- machine
def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _busy_seconds() -> float:
    """Seconds of CPU time all CPUs spent busy (user, nice, system, irq, softirq, steal) since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class OtherLoad:
    """The CPU (in cores) that other processes used between `start()` and `stop()`."""

    available = os.path.exists("/proc/stat")

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = (
            time.perf_counter(),
            _busy_seconds() if self.available else 0.0,
            _own_seconds(),
        )

    def stop(self) -> float:
        if not self.available:
            return 0.0
        wall = max(time.perf_counter() - self.t0, 1e-6)
        other = (_busy_seconds() - self.busy0) - (_own_seconds() - self.own0)
        return max(other, 0.0) / wall


def wait_for_quiet(busy: float, max_wait: float, window: float = 0.25) -> float:
    """Wait until other processes use less than `busy` cores over `window` seconds; returns the last load."""
    if not OtherLoad.available or max_wait <= 0:
        return 0.0
    deadline = time.perf_counter() + max_wait
    probe = OtherLoad()
    while True:
        probe.start()
        time.sleep(window)
        load = probe.stop()
        if load < busy or time.perf_counter() > deadline:
            return load


# ---------------------------------------------------------------------------------------------- models
def _perturb(model: nn.Module, seed: int = 0) -> None:
    """Move the weights away from their initial values (logit scales differ per head, biases are non-zero),
    so that the agreement check would see a wrong mapping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("logit_scale"):
                p.copy_(math.log(10.0) + 0.5 * noise.to(p.dtype))
            elif p.dim() == 1:
                p.add_(0.05 * noise)
            else:
                p.add_(0.02 * noise)


def build_transformers() -> nn.Module:
    import transformers

    config = transformers.Swinv2Config(
        image_size=IMAGE,
        window_size=8,
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        drop_path_rate=0.0,
        num_labels=CLASSES,
    )
    model = transformers.Swinv2ForImageClassification(config)
    _perturb(model)
    return model


def build_timm() -> nn.Module:
    import timm

    return timm.create_model(
        "swinv2_tiny_window8_256", pretrained=False, num_classes=CLASSES, drop_path_rate=0.0
    )


def build_torchvision() -> nn.Module:
    import torchvision
    from torchvision.ops import StochasticDepth

    model = torchvision.models.swin_v2_t(weights=None, num_classes=CLASSES)
    for module in model.modules():
        if isinstance(module, StochasticDepth):  # swin_v2_t fixes 0.2; the others run without drop path
            module.p = 0.0
    window = model.features[1][0].attn.window_size
    if list(window) != [8, 8]:
        raise RuntimeError(f"torchvision swin_v2_t has window {window}, not 8: not the same architecture")
    return model


def build_ours(state: dict | None = None, fmt: str = "hf") -> nn.Module:
    from swinv2 import Swinv2Config, Swinv2ForImageClassification
    from swinv2.checkpoints import load_into_model, to_canonical

    config = Swinv2Config(image_size=IMAGE, window_size=8, drop_path_rate=0.0, num_labels=CLASSES)
    model = Swinv2ForImageClassification(config)
    if state is not None:
        canonical, fmt = to_canonical(state)
        load_into_model(model, canonical, fmt, source="benchmark")
    return model


def ours_from_peer(peer: nn.Module) -> nn.Module | None:
    """Ours with a peer's weights, through our converters; None when `checkpoints` cannot map that format."""
    from swinv2.checkpoints import CheckpointError

    try:
        return build_ours(peer.state_dict())
    except CheckpointError:
        return None


def logits_fn(impl: str, model: nn.Module):
    """A function pixel_values -> logits for any implementation."""
    if impl == "transformers":
        return lambda x: model(pixel_values=x).logits
    if impl == "ours":
        return lambda x: model(x).logits
    return model


# ---------------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    device: str
    dtype: str
    task: str  # infer | train
    mode: str  # eager | graphed | compile | cudagraphs
    batch: int
    ms: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    first_call_s: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    contended: dict[str, int] = field(default_factory=dict)
    other_load: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.device} {self.dtype} {self.task} {self.mode} b{self.batch}"


def autocast(device: str, dtype: str, cache: bool = True):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=DTYPES[dtype], cache_enabled=cache)


# torch.compile's mode for each benchmark mode other than eager
COMPILE_MODES = {"compile": None, "cudagraphs": "reduce-overhead"}


def make_step(impl: str, model: nn.Module, row: Row, compiled: nn.Module | None):
    """A closure that runs one sample of the row (one forward, or one training step)."""
    device = row.device
    x = torch.randn(row.batch, 3, IMAGE, IMAGE, device=device)
    fn = logits_fn(impl, compiled if compiled is not None else model)
    if row.task == "infer":
        model.eval()

        def step():
            if row.mode == "cudagraphs":  # a new iteration: the last replay's outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            with torch.inference_mode(), autocast(device, row.dtype, cache=row.mode != "graphed"):
                return fn(x)

        if row.mode == "graphed":
            from swinv2.benchmark import cuda_graphed

            return cuda_graphed(step)
        return step
    model.train()
    labels = torch.randint(0, CLASSES, (row.batch,), device=device)
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    except (RuntimeError, TypeError):  # fused AdamW not available on this device/build
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    def train_step():
        with autocast(device, row.dtype):
            logits = fn(x)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return train_step


def warm_capture_stream() -> None:
    """Capture a few small GEMMs as the graphed rows capture a forward. The process's first capture gives
    CUDA graphs' capture stream its cuBLAS workspaces (tens of MiB, kept for the process), which would
    otherwise count in the peak memory of whichever implementation a graphed row captures first."""
    from swinv2.benchmark import cuda_graphed

    for dtype in (torch.float32, torch.bfloat16):
        a, bias = torch.randn(64, 64, device="cuda", dtype=dtype), torch.randn(64, device="cuda", dtype=dtype)
        cuda_graphed(lambda a=a, bias=bias: (a @ a, F.linear(a, a, bias)))()
    torch.cuda.synchronize()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t0


# A call shorter than this runs once, untimed, after the quiet-window wait and before its timed sample: the
# wait idles the cores, and the first call after it runs on cold caches and sleeping worker threads (batch 1
# on 2 cores: 15-20% slower, with a spread that hid the models' difference), measuring the wake-up.
REWARM_S = 0.5


def run_row(row: Row, models: dict[str, nn.Module], args) -> None:
    impls = [i for i in models if i in args.impls]
    steps = {}
    for impl in impls:
        try:
            module = None
            if row.mode in COMPILE_MODES:
                key = (impl, row.device, row.task, row.mode)
                if key not in args.compiled_cache:
                    args.compiled_cache[key] = torch.compile(models[impl], mode=COMPILE_MODES[row.mode])
                module = args.compiled_cache[key]
            steps[impl] = make_step(impl, models[impl], row, module)
            if row.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            row.first_call_s[impl] = timed(steps[impl], row.device)  # first call: compiles, builds caches
            if row.device == "cuda":
                row.peak_mb[impl] = (torch.cuda.max_memory_allocated() - resident) / 2**20
        except (
            Exception
        ) as err:  # one implementation failing (e.g. compile on this build) must not hide the others
            row.errors[impl] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            steps.pop(impl, None)
    warm = {impl: float("inf") for impl in steps}
    for _ in range(args.warmup):
        for impl in list(steps):
            warm[impl] = min(warm[impl], timed(steps[impl], row.device))
    for impl in steps:
        row.samples[impl], row.contended[impl], row.other_load[impl] = [], 0, 0.0
    probe = OtherLoad()
    for _ in range(args.repeats):
        for impl in steps:
            wait_for_quiet(args.busy, args.max_wait)
            probe.start()
            if warm[impl] < REWARM_S:
                timed(steps[impl], row.device)
            seconds = timed(steps[impl], row.device)
            load = probe.stop()
            row.samples[impl].append(seconds)
            row.other_load[impl] = max(row.other_load[impl], load)
            row.contended[impl] += load > args.busy
    for impl, samples in row.samples.items():
        row.ms[impl] = 1000 * statistics.median(samples)
    del steps
    gc.collect()
    if row.device == "cuda":
        torch.cuda.empty_cache()


def rss_child(row: Row, impl: str, args) -> float | None:
    """Peak RSS (MiB) of a fresh process that runs this row for one implementation (CPU rows only)."""
    cmd = [
        sys.executable,
        __file__,
        "--_rss",
        impl,
        row.dtype,
        row.task,
        str(row.batch),
        "--threads",
        str(args.threads),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def rss_main(impl: str, dtype: str, task: str, batch: int) -> None:
    model = {
        "ours": build_ours,
        "transformers": build_transformers,
        "timm": build_timm,
        "torchvision": build_torchvision,
    }[impl]()
    step = make_step(impl, model, Row("cpu", dtype, task, "eager", batch), None)
    step()
    step()
    print(peak_rss_mib())


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: ru_maxrss survives fork+exec, so a child would report
    the parent's peak."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- agreement
def check_agreement(models: dict[str, nn.Module], device: str) -> dict[str, str]:
    """Assert that ours, given each peer's weights through our converters, gives the peer's logits (fp32)."""
    result = {}
    x = torch.randn(2, 3, IMAGE, IMAGE, device=device)
    for impl in PEERS:
        if impl not in models:
            continue
        peer = models[impl].eval()
        ours = ours_from_peer(peer)
        if ours is None:
            result[impl] = "speed only (no weight mapping for this format yet)"
            continue
        ours = ours.to(device).eval()
        with torch.inference_mode():
            expected = logits_fn(impl, peer)(x).float()
            actual = logits_fn("ours", ours)(x).float()
        diff = (expected - actual).abs().max().item()
        tolerance = 1e-4 * max(1.0, expected.abs().max().item())
        if not diff <= tolerance:
            raise AssertionError(
                f"ours and {impl} disagree on {device}: max |logit diff| {diff:.3g} > {tolerance:.3g}"
            )
        result[impl] = f"logits agree (max diff {diff:.2e})"
    return result


# ---------------------------------------------------------------------------------------------- output
def fmt_cell(row: Row, impl: str) -> str:
    if impl in row.errors:
        return "error"
    if impl not in row.ms:
        return "-"
    ms = row.ms[impl]
    text = f"{ms:.1f} ms" if row.batch == 1 else f"{1000 * row.batch / ms:.1f} img/s"
    return text + ("*" if row.contended.get(impl) else "")


def ratio(row: Row) -> float | None:
    peers = [row.ms[p] for p in PEERS if p in row.ms]
    if "ours" not in row.ms or not peers:
        return None
    return min(peers) / row.ms["ours"]


def table(rows: list[Row], impls: list[str]) -> str:
    head = [
        "row",
        *impls,
        "speed vs best peer",
        "first call s (ours / best peer)",
        "peak MiB (ours / best peer)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        r = ratio(row)
        peers_first = [row.first_call_s[p] for p in PEERS if p in row.first_call_s]
        first = (
            f"{row.first_call_s['ours']:.1f} / {min(peers_first):.1f}"
            if "ours" in row.first_call_s and peers_first
            else "-"
        )
        peers_mem = [row.peak_mb[p] for p in PEERS if row.peak_mb.get(p) is not None]
        mem = "-"
        if row.peak_mb.get("ours") is not None and peers_mem:
            ours, best = row.peak_mb["ours"], min(peers_mem)
            mem = f"{ours:.0f} / {best:.0f} ({ours / best:.2f}x)"
        cells = [
            row.name + (f" ({row.note})" if row.note else ""),
            *(fmt_cell(row, i) for i in impls),
            f"{r:.2f}x" if r else "-",
            first,
            mem,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(args, machine: dict, agreement: dict, rows: list[Row]) -> None:
    settings = {k: v for k, v in vars(args).items() if k not in ("compiled_cache", "_rss")}
    done = [asdict(r) | {"ratio": ratio(r)} for r in rows if r.ms or r.errors]
    out = {"machine": machine, "agreement": agreement, "args": settings, "rows": done}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, or cpu,cuda; auto = cpu, plus cuda when present"
    )
    p.add_argument("--dtype", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--task", default="infer,train", help="infer and/or train (forward, backward, AdamW step)")
    p.add_argument(
        "--mode",
        default="eager,compile",
        help="eager, graphed (eager in a CUDA graph), compile (torch.compile) and/or cudagraphs (compiled with "
        "reduce-overhead); the graph modes on CUDA inference rows",
    )
    p.add_argument("--batch", default="", help="inference batches, default 1 and 8 on CPU, 1 and 256 on CUDA")
    p.add_argument("--train-batch", type=int, default=0, help="training batch, default 8 on CPU, 128 on CUDA")
    p.add_argument("--impls", default=",".join(IMPLS), help="which implementations, comma-separated")
    p.add_argument("--repeats", type=int, default=0, help="timed samples per implementation and row")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after the first one")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores of this process)")
    p.add_argument(
        "--busy", type=float, default=0.2, help="cores of other load above which a sample is contended"
    )
    p.add_argument(
        "--max-wait", type=float, default=10.0, help="seconds to wait for a quiet machine before a sample"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes on CPU")
    p.add_argument(
        "--quick", action="store_true", help="CPU fp32 eager rows only, 3 repeats, 1 warm-up (unless given)"
    )
    p.add_argument("--json", default="benchmarks/results.json", help="where to write the results")
    p.add_argument("--markdown", default="", help="also write the table to this file")
    p.add_argument("--render", default="", help="print the table of a JSON file this script wrote, and exit")
    p.add_argument("--_rss", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.device = "cpu" if args.device == "auto" else args.device
        args.dtype, args.mode = "fp32", "eager"
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.warmup = 1 if args.warmup is None and args.quick else (2 if args.warmup is None else args.warmup)
    return args


def plan(args) -> list[Row]:
    devices = args.device.split(",")
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
        batches = (
            [int(b) for b in args.batch.split(",")]
            if args.batch
            else ([1, 8] if device == "cpu" else [1, 256])
        )
        train_batch = args.train_batch or (8 if device == "cpu" else 128)
        for mode in args.mode.split(","):
            if mode not in ("eager", "graphed", *COMPILE_MODES):
                raise SystemExit(f"--mode {mode}: not a mode; use eager, graphed, compile or cudagraphs")
            for dtype in args.dtype.split(","):
                for task in args.task.split(","):
                    if mode in ("graphed", "cudagraphs") and (device != "cuda" or task != "infer"):
                        continue  # CUDA graphs replay on a GPU; training steps are timed eager or compiled
                    for batch in batches if task == "infer" else [train_batch]:
                        rows.append(Row(device, dtype, task, mode, batch))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    args.threads = args.threads or cpus()
    torch.set_num_threads(args.threads)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        names = {f.name for f in fields(Row)}
        rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in saved["rows"]]
        impls = [i for i in IMPLS if any(i in r.ms or i in r.errors for r in rows)]
        print(f"machine: {json.dumps(saved['machine'])}\n\n{table(rows, impls)}")
        return 0
    if args._rss:
        impl, dtype, task, batch = args._rss
        rss_main(impl, dtype, task, int(batch))
        return 0
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    torch._dynamo.config.cache_size_limit = 64
    args.impls = [i for i in args.impls.split(",") if i]
    args.compiled_cache = {}
    rows = plan(args)
    flags = cpu_flags()
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    machine = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for lib in ("transformers", "timm", "torchvision", "triton"):
        with contextlib.suppress(ImportError):
            machine[lib] = __import__(lib).__version__
    print(f"# machine: {json.dumps(machine)}", flush=True)
    if any(r.device == "cpu" and r.dtype == "bf16" for r in rows) and not native_bf16:
        print(
            "# warning: this CPU has no native bf16 (avx512_bf16/amx): ours runs bf16 autocast in fp32 "
            "(it warns); the peers emulate bf16",
            flush=True,
        )

    builders = {"transformers": build_transformers, "timm": build_timm, "torchvision": build_torchvision}
    agreement: dict[str, dict[str, str]] = {}
    for device in dict.fromkeys(r.device for r in rows):
        torch.manual_seed(0)
        models: dict[str, nn.Module] = {}
        for impl in PEERS:
            if impl in args.impls:
                try:
                    models[impl] = builders[impl]().to(device)
                except ImportError as err:
                    print(f"# {impl} not installed: {err}", flush=True)
        ours = None
        if "transformers" in models:
            from swinv2.checkpoints import CheckpointError

            try:
                ours = build_ours(models["transformers"].state_dict())
            except CheckpointError as err:  # a transformers release with other key names: say so, time anyway
                print(f"# warning: transformers weights do not convert ({err}); ours runs on its own weights")
        models = {"ours": (ours if ours is not None else build_ours()).to(device), **models}
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (
            False  # agreement in true fp32
        )
        agreement[device] = check_agreement(models, device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        print(f"# agreement on {device}: {json.dumps(agreement[device])}", flush=True)
        if any(r.device == device and r.mode == "graphed" for r in rows):
            warm_capture_stream()
        for row in [r for r in rows if r.device == device]:
            t0 = time.perf_counter()
            run_row(row, models, args)
            if device == "cpu" and row.mode == "eager" and not args.no_memory:
                for impl in models:
                    row.peak_mb[impl] = rss_child(row, impl, args)
            summary = ", ".join(f"{i} {fmt_cell(row, i)}" for i in models)
            errors = f"; errors {row.errors}" if row.errors else ""
            print(f"# {row.name}: {summary}{errors} ({time.perf_counter() - t0:.0f} s)", flush=True)
            write_json(
                args, machine, agreement, rows
            )  # after every row: a run cut short keeps what it measured
        del models
        gc.collect()

    impls = [i for i in args.impls if any(i in r.ms or i in r.errors for r in rows)]
    text = table(rows, impls)
    legend = (
        "\nCells: median over the repeats (batch 1: latency, else throughput); * = some samples ran while "
        f"other processes used > {args.busy} cores. Speed vs best peer > 1 means ours is faster. Peak MiB: "
        "CUDA = peak allocated above resident; CPU = peak RSS of a child process running only that "
        "implementation."
    )
    print("\n" + text + legend)
    write_json(args, machine, agreement, rows)
    if args.markdown:
        Path(args.markdown).write_text(f"machine: {json.dumps(machine)}\n\n{text}\n{legend}\n")
    print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
