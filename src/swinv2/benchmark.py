"""Speed and memory of one model on this machine: what `swinv2 benchmark` measures.

A row is (task, mode, dtype, batch): inference (one forward under `torch.inference_mode`) or a training step
(forward, loss, backward, AdamW), eager, `torch.compile`d or (CUDA inference) an eager forward captured once
in a CUDA graph and replayed, in fp32 or under autocast. The first call is
timed apart (it compiles, builds caches), then warm-up calls, then `repeats` timed calls; the row reports
their median and 10th/90th percentiles, and the peak memory of the row: on CUDA the most allocated by
PyTorch, on CPU the peak resident memory of the process (reset before each row where Linux allows it, after
what earlier rows freed is handed back, so that a row's peak does not depend on the rows before it).

The input is random pixels: the model's speed does not depend on what the image shows. To compare against
transformers, timm and torchvision, see `benchmarks/bench.py`, which runs them side by side.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Row:
    task: str  # infer | train
    mode: str  # eager | compile | graphed
    dtype: str  # fp32 | bf16 | fp16
    batch: int
    latency_ms: float = 0.0  # median of the timed calls
    p10_ms: float = 0.0
    p90_ms: float = 0.0
    images_per_s: float = 0.0
    first_call_s: float = 0.0
    peak_memory_mib: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def machine(device: torch.device) -> str:
    """What the figures were measured on: the GPU, or the CPU's model and PyTorch's thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{device.type}: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _release_earlier_rows(model: nn.Module, device: torch.device) -> None:
    """Free what earlier rows left behind (their steps' optimizer states, the model's attention caches sized
    for their batch, and on CPU the heap they freed, which the `swinv2` command keeps in the process), so that
    the next row's peak is its own whatever the rows before it."""
    gc.collect()
    clear = getattr(model, "clear_attention_cache", None)
    if callable(clear):
        clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "cpu" and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back: the resident size falls


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux: writing 5 to clear_refs resets VmHWM, so that each row reports its own peak.
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_memory_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type != "cpu":  # no peak counter to read
        return None
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _autocast(device: torch.device, dtype: str, cache: bool = True):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype], cache_enabled=cache)


def falls_back_to_fp32(model: nn.Module, device: torch.device, dtype: str) -> bool:
    """Whether the model runs a `dtype` row in fp32: bf16 autocast on a CPU without native bf16, where the
    model's forward turns autocast off (emulated bf16 would be several times slower) and warns. Asked inside
    the row's autocast, as the forward asks."""
    from .modeling import cpu_bf16_is_emulated

    if device.type != "cpu" or dtype != "bf16" or getattr(model, "dtype", torch.float32) != torch.float32:
        return False
    with _autocast(device, dtype):
        return cpu_bf16_is_emulated()


FP32_FALLBACK_NOTE = "ran in fp32: no native bf16 on this CPU"


def cuda_graphed(step: Callable[[], Any]) -> Callable[[], Any]:
    """`step` captured in a CUDA graph on its first call, then replayed: the GPU's time without the host's
    launches. Before the capture, warm-up calls on a side stream (as capture needs) load the kernels and
    build the model's caches. `step` must read its inputs from fixed tensors, and under autocast disable
    the weight-cast cache (`cache_enabled=False`); each replay returns the same output tensors, rewritten."""
    graph, out = None, None

    def replay() -> Any:
        nonlocal graph, out
        if graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = step()
        graph.replay()
        return out

    return replay


def _make_step(model: nn.Module, row: Row, device: torch.device, image_hw: tuple[int, int]) -> Callable[[], Any]:
    """One call of the row: a forward, or a training step (the classifier's cross-entropy on random labels;
    for the other heads the mean square of the first output, which reaches every parameter it uses)."""
    config = model.config
    pixels = torch.randn(row.batch, config.num_channels, *image_hw, device=device)
    if row.mode == "compile":
        from .training import compile_model

        run = compile_model(model, device.type)
    else:
        run = model
    if row.task == "infer":
        model.eval()
        graphed = row.mode == "graphed"

        def infer() -> Any:
            with torch.inference_mode(), _autocast(device, row.dtype, cache=not graphed):
                return run(pixels)

        return cuda_graphed(infer) if graphed else infer
    model.train()
    num_labels = getattr(config, "num_labels", 0) if hasattr(model, "classifier") else 0
    labels = torch.randint(0, max(num_labels, 1), (row.batch,), device=device)
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):  # no fused AdamW for this device or build
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=True)

    def train() -> None:
        with _autocast(device, row.dtype):
            out = run(pixels)
        first = out[0]
        if isinstance(first, (list, tuple)):  # the backbone's feature maps
            first = first[0]
        loss = F.cross_entropy(first.float(), labels) if num_labels > 1 else first.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def measure(
    model: nn.Module,
    rows: list[Row],
    device: torch.device,
    image_hw: tuple[int, int],
    repeats: int = 10,
    warmup: int = 2,
    on_call: Callable[[], None] | None = None,
) -> Iterator[Row]:
    """Time each row on `model` (moved to `device`), yielding it when measured. A training row changes the
    model's weights (AdamW steps at a tiny learning rate): measure a copy if the weights matter.
    `on_call` runs after every call (a progress bar's update)."""
    model.to(device)
    step = None
    for row in rows:
        step = None  # (the previous row's, with its optimizer, goes before this row is measured)
        _release_earlier_rows(model, device)
        step = _make_step(model, row, device, image_hw)
        _reset_peak_memory(device)
        start = time.perf_counter()
        step()
        _sync(device)
        row.first_call_s = time.perf_counter() - start
        if on_call:
            on_call()
        for _ in range(warmup):
            step()
            if on_call:
                on_call()
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - start)
            if on_call:
                on_call()
        times.sort()
        row.latency_ms = statistics.median(times) * 1e3
        row.p10_ms = times[int(0.1 * (len(times) - 1))] * 1e3
        row.p90_ms = times[round(0.9 * (len(times) - 1))] * 1e3
        row.images_per_s = row.batch / statistics.median(times)
        row.peak_memory_mib = _peak_memory_mib(device)
        yield row


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| task | mode | dtype | batch | latency ms (p10-p90) | images/s | peak memory MiB | first call s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = "-" if r.peak_memory_mib is None else f"{r.peak_memory_mib:.0f}"
        lines.append(
            f"| {r.task} | {r.mode} | {r.dtype}{' (' + r.note + ')' if r.note else ''} | {r.batch} | "
            f"{r.latency_ms:.1f} ({r.p10_ms:.1f}-{r.p90_ms:.1f}) | {r.images_per_s:.1f} | {memory} | "
            f"{r.first_call_s:.2f} |"
        )
    return "\n".join(lines)
