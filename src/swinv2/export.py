"""ONNX export of any Swin V2 model, for onnxruntime and other runtimes outside Python.

```python
from swinv2 import Swinv2ForImageClassification
from swinv2.export import export_onnx

model = Swinv2ForImageClassification.from_pretrained("my-model")
export_onnx(model, "model.onnx", image_size=(256, 256), dynamic_batch=True)
```

The graph takes `pixel_values` `(B, C, H, W)` float32 (already resized and normalised, as the image processor
gives them) and returns, by model class:

- `Swinv2ForImageClassification`: `logits` `(B, num_labels)`;
- `Swinv2Model`: `last_hidden_state` `(B, L, C)` and `pooler_output` `(B, C)` (without the pooling layer, only
  the first);
- `Swinv2ForMaskedImageModeling`: `reconstruction` `(B, C, H, W)`;
- `Swinv2Backbone`: one `(B, C_i, H_i, W_i)` map per `config.out_features`, named after the stage (`stage4`).

The height and width are fixed at export time: window padding, shifts and masks depend on them, and fixing
them lets the exporter fold the position bias and the masks into constants. The batch is fixed too unless
`dynamic_batch=True`.

Requirements: `pip install 'swinv2[export]'` (onnx, onnxscript; onnxruntime to run the result).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoints import WriteError, atomic_write
from .modeling import (
    Swinv2Backbone,
    Swinv2ForImageClassification,
    Swinv2ForMaskedImageModeling,
    Swinv2Model,
    Swinv2PreTrainedModel,
)

DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18  # the oldest opset torch.onnx's dynamo exporter writes itself
# The oldest opset every Swin V2 model exports to (with the TorchScript exporter): patch merging takes every
# other token, a Slice with steps (opset 10), and padding to whole windows with a dynamic batch is a Pad whose
# amounts are an input (opset 11). torch.onnx writes opsets from 7 for other models.
OLDEST_OPSET = 11
# A single ONNX file is one protobuf message, which cannot exceed 2 GiB.
_PROTOBUF_LIMIT = 2**31


def newest_opset() -> int:
    """The newest opset this PyTorch's ONNX exporters write (a private constant of torch.onnx: 23 in 2.9-2.14)."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:
        return 23
    return int(ONNX_MAX_OPSET)


class _ExportGraph(nn.Module):
    """`pixel_values` -> the model's main outputs as a plain tuple of tensors (what exporters trace)."""

    def __init__(self, model: Swinv2PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        # output_attentions=True selects the explicit attention path (matmul, add, softmax, matmul). The fast
        # path's scaled_dot_product_attention is decomposed by torch.export into ops whose output strides
        # differ from the ones it traced, and the export fails; the explicit path is the same math.
        out = self.model(pixel_values, output_attentions=True, return_dict=True)
        if isinstance(self.model, Swinv2ForImageClassification):
            return (out.logits,)
        if isinstance(self.model, Swinv2ForMaskedImageModeling):
            return (out.reconstruction,)
        if isinstance(self.model, Swinv2Backbone):
            return tuple(out.feature_maps)
        if out.pooler_output is None:
            return (out.last_hidden_state,)
        return out.last_hidden_state, out.pooler_output


def output_names(model: Swinv2PreTrainedModel) -> list[str]:
    """Names of the exported graph's outputs, in order (see the module docstring)."""
    if isinstance(model, Swinv2ForImageClassification):
        return ["logits"]
    if isinstance(model, Swinv2ForMaskedImageModeling):
        return ["reconstruction"]
    if isinstance(model, Swinv2Backbone):
        return list(model.out_features)
    if isinstance(model, Swinv2Model):
        return ["last_hidden_state", "pooler_output"] if model.add_pooling_layer else ["last_hidden_state"]
    raise TypeError(
        f"export_onnx takes a Swin V2 model (Swinv2Model, Swinv2ForImageClassification, "
        f"Swinv2ForMaskedImageModeling or Swinv2Backbone), got {type(model).__name__}"
    )


def _image_size(model: Swinv2PreTrainedModel, image_size: int | Sequence[int] | None) -> tuple[int, int]:
    if image_size is None:
        return model.config.image_hw
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of them, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Nothing on stdout, from Python or from C++: the dynamo exporter reports its progress there, and the
    TorchScript exporter prints its whole graph (thousands of lines) from C++ where it fails; a library call
    should stay quiet, and the command's own output readable."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (a detached process): only Python's stream to quieten
        saved = None
    try:
        if saved is not None:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _export_dynamo(graph: nn.Module, example: Tensor, path: str, names: list[str], dynamic_batch: bool,
                   opset: int) -> None:
    dynamic_shapes = {"pixel_values": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with _quiet_stdout():
        torch.onnx.export(
            graph, (example,), path, dynamo=True, input_names=["pixel_values"], output_names=names,
            opset_version=opset, dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
        )
    import onnx

    # Where the exporter cannot convert to the opset asked for it logs that and keeps its own: a file that
    # the runtime asked for may not load. (Below DYNAMO_MIN_OPSET this exporter is not asked at all.)
    opsets = onnx.load(path, load_external_data=False).opset_import
    written = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ValueError(f"the dynamo exporter wrote opset {written}, not the {opset} asked for")


def _export_torchscript(graph: nn.Module, example: Tensor, path: str, names: list[str], dynamic_batch: bool,
                        opset: int) -> None:
    axes = {name: {0: "batch"} for name in ["pixel_values", *names]} if dynamic_batch else None
    with warnings.catch_warnings():
        # The tracer warns about Python branches on shapes; height and width are fixed by design, and the
        # only batch-dependent arithmetic (windows per batch) is traced as a shape computation.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with _quiet_stdout():
            torch.onnx.export(
                graph, (example,), path, dynamo=False, input_names=["pixel_values"], output_names=names,
                opset_version=opset, dynamic_axes=axes, do_constant_folding=True,
            )


def check_opset(opset: int, exporter: str = "auto") -> None:
    """Raise a ValueError naming the range when no exporter (or not the one asked for) writes `opset`.

    Checked before anything else: the exporters try an opset they do not know before they fail, printing the
    whole graph; and the command checks its arguments before it loads the model."""
    newest = newest_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not OLDEST_OPSET <= opset <= newest:
        raise ValueError(
            f"opset {opset!r} is not one Swin V2 exports to: use {OLDEST_OPSET}-{newest} "
            f"(default {DEFAULT_OPSET}; below {DYNAMO_MIN_OPSET} the TorchScript exporter writes it)"
        )
    if opset < DYNAMO_MIN_OPSET and exporter == "dynamo":
        raise ValueError(
            f"the dynamo ONNX exporter writes opset {DYNAMO_MIN_OPSET} and newer, not {opset}: use "
            "exporter='torchscript' (swinv2 export --exporter torchscript) for an older opset"
        )


def export_onnx(
    model: Swinv2PreTrainedModel,
    path: str | os.PathLike,
    image_size: int | Sequence[int] | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    batch_size: int = 1,
    exporter: str = "auto",
) -> str:
    """Write `model` as an ONNX graph to `path` (atomically) and return the exporter used.

    Args:
        model: any of the four Swin V2 models, with its weights; it is exported in eval mode, on its own
            device and in its own dtype (float32 is what every ONNX runtime supports), and left in the
            train/eval mode it was in.
        path: the `.onnx` file to write; its folder is created.
        image_size: `(height, width)` of the `pixel_values` the graph takes (default `config.image_size`).
        dynamic_batch: let the batch dimension vary; otherwise it is fixed at `batch_size`.
        opset: ONNX opset version.
        batch_size: the fixed batch when `dynamic_batch` is False.
        exporter: "dynamo" (`torch.onnx.export(dynamo=True)`, based on torch.export), "torchscript" (the
            older tracer) or "auto": dynamo, and the TorchScript tracer with a warning if dynamo fails.

    Returns: "dynamo" or "torchscript", whichever wrote the file.
    """
    names = output_names(model)
    height, width = _image_size(model, image_size)
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_opset(opset, exporter)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size >= _PROTOBUF_LIMIT:
        raise ValueError(
            f"the model's weights take {size / 2**30:.1f} GiB, more than a single ONNX file can hold (2 GiB); "
            "export it in float16 (model.half()) or use torch.onnx.export with external_data=True"
        )
    # torch.export specialises a dimension of size 1; trace a batch of 2 when the batch is to stay free.
    example_batch = 2 if dynamic_batch else batch_size
    example = torch.zeros(example_batch, model.config.num_channels, height, width, device=model.device,
                          dtype=model.dtype)
    if opset < DYNAMO_MIN_OPSET:  # dynamo would export at its own opset and try, often in vain, to convert down
        exporter = "torchscript"
    try:
        import onnx  # noqa: F401  (both exporters write through it)
    except ImportError as err:
        raise ImportError(f"exporting to ONNX needs the onnx package ({err}; and onnxscript for the dynamo "
                          "exporter): pip install 'swinv2[export]'") from err
    modes = {module: module.training for module in model.modules()}
    graph = _ExportGraph(model).eval()
    try:
        if exporter in ("auto", "dynamo"):
            try:
                atomic_write(path, lambda tmp: _export_dynamo(graph, example, tmp, names, dynamic_batch, opset))
                return "dynamo"
            except ImportError as err:
                if exporter == "dynamo":
                    raise ImportError(
                        f"the dynamo ONNX exporter needs onnx and onnxscript ({err}); "
                        "pip install 'swinv2[export]'"
                    ) from err
                reason = f"{type(err).__name__}: {err}"
            except WriteError:  # the file, not the exporter, failed: the other exporter would fail the same way
                raise
            except Exception as err:  # the exporter raises many error types; all mean "this route failed"
                if exporter == "dynamo":
                    raise
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            warnings.warn(
                f"the dynamo ONNX exporter failed ({reason}); falling back to the TorchScript exporter",
                stacklevel=2,
            )
        try:
            atomic_write(path, lambda tmp: _export_torchscript(graph, example, tmp, names, dynamic_batch, opset))
        except torch.onnx.errors.SymbolicValueError as err:  # an op this opset cannot express
            raise ValueError(
                f"the TorchScript ONNX exporter cannot write this model at opset {opset} "
                f"({str(err).splitlines()[0].split(' [Caused by')[0]}): use a newer opset (the default, "
                f"{DEFAULT_OPSET}, works)"
            ) from err
        return "torchscript"
    finally:
        for module, training in modes.items():
            module.training = training


_ONNX_INPUT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64}


def check_onnx(
    model: Swinv2PreTrainedModel, path: str | os.PathLike, pixel_values: Tensor
) -> dict[str, float]:
    """Run the exported graph in onnxruntime on `pixel_values` and return, per output, the largest absolute
    difference from the PyTorch model (in eval mode) on the same input."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from err
    try:
        session = onnxruntime.InferenceSession(str(Path(path)), providers=["CPUExecutionProvider"])
        # the graph's own input dtype: float16 for an exported .half() model
        fed = _ONNX_INPUT_DTYPES.get(session.get_inputs()[0].type, torch.float32)
        got = session.run(None, {"pixel_values": pixel_values.detach().cpu().to(fed).numpy()})
    except Exception as err:  # onnxruntime raises its own exception types, not a common base
        raise RuntimeError(
            f"onnxruntime cannot run {path} on the CPU: {str(err).strip().splitlines()[0]}. Its CPU kernels "
            "cover float32 (and most of float16) graphs: export a float32 model to check it"
        ) from err
    modes = {module: module.training for module in model.modules()}
    graph = _ExportGraph(model).eval()
    try:
        with torch.no_grad():
            expected = graph(pixel_values.to(device=model.device, dtype=model.dtype))
    finally:
        for module, training in modes.items():
            module.training = training
    return {
        name: float((torch.from_numpy(g).float() - e.float().cpu()).abs().max())
        for name, g, e in zip(output_names(model), got, expected)
    }
