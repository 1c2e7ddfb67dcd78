"""Robustness on a CUDA GPU: half precision and autocast stay finite, the finite-input policy, deterministic mode.

Skipped without a GPU (the CPU versions of these checks are in test_properties.py, test_bad_input.py and
test_determinism.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PARITY_CONFIGS, perturb_

import swinv2
from swinv2 import Swinv2Config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIG = {**PARITY_CONFIGS["not_divisible_by_window"], "num_labels": 5}  # image 44, window 4: padded windows
SIZES = [(1, 1), (5, 3), (17, 33), (44, 44), (61, 40)]


def built(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = swinv2.Swinv2ForImageClassification(Swinv2Config(**{**CONFIG, **overrides})).eval()
    perturb_(model, torch.Generator().manual_seed(1))
    return model.cuda()


def pixels(height: int, width: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(2)).cuda()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_stay_finite_and_close(dtype):
    reference = built()
    low = built().to(dtype)
    for size in SIZES:
        x = pixels(*size)
        with torch.no_grad():
            expected = reference(x).logits
            fast = low(x.to(dtype), output_hidden_states=True)
            exact = low(x.to(dtype), output_attentions=True)
        assert torch.isfinite(fast.logits).all() and torch.isfinite(exact.logits).all(), size
        assert all(torch.isfinite(h).all() for h in fast.hidden_states), size
        torch.testing.assert_close(fast.logits.float(), expected, atol=0.25, rtol=0.1)
        torch.testing.assert_close(fast.logits, exact.logits, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_stays_finite_and_close(dtype):
    model = built()
    for size in SIZES:
        x = pixels(*size)
        with torch.no_grad():
            expected = model(x).logits
            with torch.autocast("cuda", dtype=dtype):
                fast = model(x).logits
                exact = model(x, output_attentions=True).logits
        assert torch.isfinite(fast).all() and torch.isfinite(exact).all(), size
        torch.testing.assert_close(fast.float(), expected, atol=0.25, rtol=0.1)


def test_fast_path_matches_exact_path_fp32():
    model = built()
    for size in SIZES:
        x = pixels(*size)
        with torch.no_grad():
            fast = model(x).logits
            exact = model(x, output_attentions=True).logits
        torch.testing.assert_close(fast, exact, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_eager_inference_replays_as_a_cuda_graph(dtype):
    """Eager inference (Triton kernels, cached masks and layouts) syncs nothing with the host and can be
    captured in a CUDA graph: its replays on new inputs give eager's outputs. That is the low-latency
    recipe of the README."""
    model = built()
    static = pixels(44, 44)

    def forward(x):
        # autocast's weight-cast cache off, as CUDA-graph capture asks
        low = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), low:
            return model(x).logits

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: builds the caches, loads the kernels
        forward(static)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.set_sync_debug_mode("error")
    try:
        forward(static)  # a warm eager call: any host read would raise here
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = forward(static)
    for seed in (3, 4):
        x = torch.randn(static.shape, generator=torch.Generator().manual_seed(seed)).cuda()
        static.copy_(x)
        graph.replay()
        torch.testing.assert_close(replayed, forward(x))


def test_benchmark_times_cuda_graph_replays():
    """`swinv2 benchmark --cuda-graph`: a graphed row replays the captured forward, for every dtype."""
    from swinv2 import benchmark

    rows = [benchmark.Row("infer", "graphed", dtype, 2) for dtype in ("fp32", "bf16")]
    measured = list(benchmark.measure(built(), rows, torch.device("cuda"), (44, 44), repeats=3, warmup=1))
    assert [r.mode for r in measured] == ["graphed", "graphed"]
    assert all(r.latency_ms > 0 and r.peak_memory_mib > 0 for r in measured)


def test_finite_check_policy_on_gpu():
    """Default: no check on a GPU (it would cost a host sync per call); NaN then stays in its image.
    check_finite_inputs=True checks there too."""
    x = pixels(44, 44)
    x[0, 1, 5, 5] = float("nan")
    model = built()
    with torch.no_grad():
        logits = model(x).logits
    assert torch.isnan(logits[0]).all() and torch.isfinite(logits[1]).all()
    strict = built(check_finite_inputs=True)
    with pytest.raises(ValueError, match=r"1 NaN and 0 infinite values \(batch indices \[0\]\)"):
        strict(x)


def test_wrong_device_is_named():
    model = built()
    with pytest.raises(ValueError, match=r"pixel_values is on cpu but the model's weights are on cuda:0"):
        model(torch.zeros(1, 3, 44, 44))


_TRAIN = """
import hashlib, sys, torch
sys.path.insert(0, {tests!r})
import swinv2
from test_determinism import CONFIG, _photos
swinv2.set_deterministic(0)
model = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(**CONFIG)).cuda().train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
images, labels = _photos().cuda(), torch.arange(CONFIG["num_labels"]).cuda()
for _ in range(4):
    order = torch.randperm(len(labels), device="cuda")
    top, left = torch.randint(0, 17, (2,)).tolist()
    loss = model(images[order, :, top:top + 32, left:left + 32], labels=labels[order]).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    out = model(images[:, :, :40, :40]).logits
digest = hashlib.sha256()
for t in [*model.state_dict().values(), out]:
    digest.update(t.detach().cpu().contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def test_deterministic_training_on_gpu():
    """Two processes (deterministic mode must be on before CUDA starts): bit-identical weights and outputs."""
    code = _TRAIN.format(tests=str(Path(__file__).parent))
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    assert runs[0].stdout.split()[-1] == runs[1].stdout.split()[-1]
