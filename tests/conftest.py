"""Shared fixtures: small configs and transformers-made reference models with perturbed random weights."""

from __future__ import annotations

import math
import os

# Without an NVIDIA GPU the Triton kernel is tested through Triton's interpreter, which must be switched on
# before anything imports triton (torch.compile and the ONNX exporter do, in other test files).
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import transformers

import swinv2

HF_CLASSES = {
    "Swinv2Model": "Swinv2Model",
    "Swinv2ForImageClassification": "Swinv2ForImageClassification",
    "Swinv2ForMaskedImageModeling": "Swinv2ForMaskedImageModeling",
    "Swinv2Backbone": "Swinv2Backbone",
}

# The parity configurations of the core issue, each small enough for a 2-core CI machine.
PARITY_CONFIGS = {
    "two_stage": dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4),
    "four_stage_small_last": dict(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 4, 8], window_size=4
    ),
    "not_divisible_by_window": dict(
        image_size=44, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4
    ),
    "pretrained_windows": dict(
        image_size=64, patch_size=4, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 4], window_size=8,
        pretrained_window_sizes=[4, 4, 2],
    ),
    "one_channel": dict(
        image_size=32, patch_size=4, num_channels=1, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4
    ),
    "patch_not_dividing": dict(
        image_size=30, patch_size=4, embed_dim=16, depths=[2, 1], num_heads=[2, 2], window_size=3,
        encoder_stride=8,
    ),
}


def perturb_(model: torch.nn.Module, seed: int | torch.Generator = 0, scale: float = 0.2) -> torch.nn.Module:
    """Move every parameter away from its initial value so that a wrong mapping shows in the outputs.

    LayerNorm weights stay near 1, logit scales stay below log(100) (the clamp) but differ per head.
    Works on our models and on transformers', timm's and torchvision's. Returns the model in eval mode.
    """
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("logit_scale"):
                p.copy_(math.log(10.0) + 0.5 * noise)
            elif "norm" in name and name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() == 1 or name.endswith(("mask_token", "position_embeddings", "pos_embed")):
                p.copy_(scale * noise)
            else:
                p.add_(scale * noise * p.std().clamp(min=0.02))
    return model.eval()


def hf_model(kind: str, config_kwargs: dict, seed: int = 0, **extra) -> torch.nn.Module:
    """A transformers model with perturbed random weights, in eval mode."""
    torch.manual_seed(seed)
    config = transformers.Swinv2Config(**config_kwargs, **extra)
    model = getattr(transformers, HF_CLASSES[kind])(config).eval()
    perturb_(model, torch.Generator().manual_seed(seed + 1))
    return model


def torchvision_swinv2(
    num_classes: int, embed_dim: int = 32, depths=(2, 2), num_heads=(2, 4), window: int = 4, patch: int = 4
):
    """A small torchvision Swin V2 (its own random init, train mode): any patch, depth and width."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    return SwinTransformer(
        patch_size=[patch, patch], embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
        window_size=[window, window], num_classes=num_classes, block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
    )


def ours_from_hf(kind: str, hf: torch.nn.Module, tmp_path) -> torch.nn.Module:
    """Load a transformers model into ours through the real path: its save_pretrained, our from_pretrained."""
    folder = tmp_path / f"hf-{kind}"
    hf.save_pretrained(folder)
    return getattr(swinv2, kind).from_pretrained(folder)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def cosine_window_attention_reference(qkv: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor, heads: int):
    """What the fused window attentions (the Triton kernel, the CPU training Function) compute, step by step in
    PyTorch, for autograd to differentiate: `qkv` `(B*nW, N, 3C)`, `mask` `(nW, heads, N, N)`, `scale` `(heads,)`."""
    b_, n, three_c = qkv.shape
    q, k, v = qkv.view(b_, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q = torch.nn.functional.normalize(q, dim=-1) * scale.view(heads, 1, 1)
    k = torch.nn.functional.normalize(k, dim=-1)
    windows = mask.shape[0]
    scores = (q @ k.transpose(-2, -1)).view(b_ // windows, windows, heads, n, n) + mask
    out = scores.softmax(-1).view(b_, heads, n, n) @ v
    return out.transpose(1, 2).reshape(b_, n, three_c // 3)
