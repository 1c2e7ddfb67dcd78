"""ONNX export: the exported graphs run in onnxruntime and give PyTorch's numbers on real photos."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import PARITY_CONFIGS, perturb_
from PIL import Image
from skimage import data as photos

import swinv2
from swinv2 import cli
from swinv2.export import export_onnx

SMALL = PARITY_CONFIGS["two_stage"]  # image 32, patch 4, window 4, embed 16, depths [2, 2]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def photo_batch(names: list[str], height: int, width: int) -> torch.Tensor:
    """scikit-image's sample photos, resized (bicubic) and normalised with the ImageNet mean and std."""
    images = []
    for name in names:
        image = Image.fromarray(getattr(photos, name)()).convert("RGB").resize((width, height), Image.BICUBIC)
        array = (np.asarray(image, dtype=np.float64) / 255.0 - MEAN) / STD
        images.append(array.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(images)).float()


def perturbed(cls: type, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cls(swinv2.Swinv2Config(**{**SMALL, **overrides})).eval()
    perturb_(model, torch.Generator().manual_seed(1))
    return model


def run(path, pixel_values: torch.Tensor) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixel_values.numpy()})


def test_classifier_with_dynamic_batch_matches_pytorch_on_photos(tmp_path):
    model = perturbed(swinv2.Swinv2ForImageClassification, num_labels=10)
    path = tmp_path / "classifier.onnx"
    # "dynamo" rather than "auto": a silent fallback to the TorchScript tracer would hide a regression.
    assert export_onnx(model, path, image_size=(32, 32), dynamic_batch=True, exporter="dynamo") == "dynamo"
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch dimension
    for names in (["astronaut"], ["astronaut", "chelsea", "coffee"]):
        x = photo_batch(names, 32, 32)
        (logits,) = run(path, x)
        with torch.no_grad():
            expected = model(x).logits
        assert logits.shape == (len(names), 10)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
        assert expected.std() > 0.1  # the weights are perturbed: a wrong graph would not hit these numbers
    assert not model.training


def test_bare_model_through_the_command_line(tmp_path, capsys):
    """`swinv2 export MODEL out.onnx --image-size H W` on a saved Swinv2Model, at a size other than
    config.image_size and not a multiple of the window (padding and shifts are baked into the graph)."""
    model = perturbed(swinv2.Swinv2Model)
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "onnx" / "bare.onnx"
    status = cli.main(["export", str(tmp_path / "model"), str(out), "--image-size", "40", "52", "--check"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "Swinv2Model" in printed.out and "(1, 3, 40, 52)" in printed.out and "exporter dynamo" in printed.out
    assert "last_hidden_state" in printed.out  # the --check line
    x = photo_batch(["chelsea"], 40, 52)
    hidden, pooled = run(out, x)
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(hidden, expected.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=1e-4, rtol=0)
    # Without --dynamic-batch the batch is fixed: onnxruntime refuses another one.
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument, match="pixel_values"):
        run(out, photo_batch(["chelsea", "coffee"], 40, 52))


def test_torchscript_exporter_and_the_fallback(tmp_path, monkeypatch):
    mim = perturbed(swinv2.Swinv2ForMaskedImageModeling, encoder_stride=8).train()
    path = tmp_path / "mim.onnx"
    assert export_onnx(mim, path, dynamic_batch=True, exporter="torchscript") == "torchscript"
    assert mim.training  # left in the mode it was in
    x = photo_batch(["coffee", "astronaut"], 32, 32)
    (reconstruction,) = run(path, x)
    mim.eval()
    with torch.no_grad():
        np.testing.assert_allclose(reconstruction, mim(x).reconstruction.numpy(), atol=1e-4, rtol=0)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr("swinv2.export._export_dynamo", broken)
    with pytest.warns(UserWarning, match="simulated dynamo failure.*falling back to the TorchScript"):
        assert export_onnx(mim, tmp_path / "fallback.onnx") == "torchscript"
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(mim, tmp_path / "strict.onnx", exporter="dynamo")
    assert not (tmp_path / "strict.onnx").exists()  # a failed export leaves no file behind
    assert sorted(os.listdir(tmp_path)) == ["fallback.onnx", "mim.onnx"]  # nor temporary files


def test_backbone_outputs_are_named_after_the_stages(tmp_path):
    backbone = perturbed(swinv2.Swinv2Backbone, out_features=["stem", "stage2"])
    path = tmp_path / "backbone.onnx"
    export_onnx(backbone, path, exporter="torchscript")  # the fast exporter; dynamo is covered above
    assert [o.name for o in onnx.load(path).graph.output] == ["stem", "stage2"]
    x = photo_batch(["astronaut"], 32, 32)
    with torch.no_grad():
        expected = backbone(x).feature_maps
    for got, want in zip(run(path, x), expected):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_bad_export_arguments(tmp_path, capsys):
    model = perturbed(swinv2.Swinv2ForImageClassification, num_labels=3)
    with pytest.raises(ValueError, match=r"image_size must be a positive int or a \(height, width\) pair"):
        export_onnx(model, tmp_path / "a.onnx", image_size=(0, 32))
    with pytest.raises(ValueError, match="exporter must be 'auto', 'dynamo' or 'torchscript'"):
        export_onnx(model, tmp_path / "a.onnx", exporter="tflite")
    with pytest.raises(TypeError, match=r"takes a Swin V2 model.*got Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "a.onnx")
    assert cli.main(["export", str(tmp_path / "missing"), str(tmp_path / "a.onnx")]) == 2
    assert "cannot load a Swinv2ForImageClassification from" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path), str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--image-size", "0", "0"], "--image-size must be two positive integers, got [0, 0]"),
    (["--opset", "99"], "--opset: opset 99 is not one"),
    ([], "OUTPUT {out!r} is a folder"),
])
def test_export_errors_say_error_as_every_command(tmp_path, capsys, flags, message):
    """`swinv2 export: error: ...`, one line, as `swinv2 <command>: error: ...` everywhere (it lacked 'error:')."""
    out = str(tmp_path) if not flags else str(tmp_path / "a.onnx")
    assert cli.main(["export", str(tmp_path / "no-model"), out, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swinv2 export: error: " + message.format(out=out)) and err.count("\n") == 1, err


def test_check_feeds_a_half_precision_graph_its_dtype_and_names_what_onnxruntime_cannot_run(tmp_path):
    from swinv2.export import check_onnx

    x = photo_batch(["astronaut"], 32, 32)
    half = perturbed(swinv2.Swinv2ForImageClassification).half()
    export_onnx(half, tmp_path / "half.onnx", image_size=(32, 32), exporter="dynamo")
    assert check_onnx(half, tmp_path / "half.onnx", x)["logits"] < 1e-2  # fp16 rounding, both sides
    bf16 = perturbed(swinv2.Swinv2ForImageClassification).bfloat16()
    export_onnx(bf16, tmp_path / "bf16.onnx", image_size=(32, 32), exporter="dynamo")
    with pytest.raises(RuntimeError, match=r"onnxruntime cannot run .* export a float32 model"):
        check_onnx(bf16, tmp_path / "bf16.onnx", x)


@pytest.mark.parametrize("opset", [5, 10, 99])
def test_an_opset_no_exporter_writes_is_refused_before_exporting(tmp_path, capfd, opset):
    """Checked before either exporter runs: the TorchScript exporter printed its whole graph, then failed (opset
    10 too, which torch.onnx writes for other models: padding with a dynamic batch needs 11)."""
    model = perturbed(swinv2.Swinv2ForImageClassification, num_labels=3)
    with pytest.raises(ValueError, match=rf"opset {opset} is not one Swin V2 exports to: use 11-\d+"):
        export_onnx(model, tmp_path / "bad.onnx", opset=opset)
    out, err = capfd.readouterr()
    assert out == "" and len(err.splitlines()) < 3 and not (tmp_path / "bad.onnx").exists()


def test_an_opset_older_than_the_dynamo_exporters_is_written_or_refused(tmp_path):
    """Below opset 18 the dynamo exporter writes 18 and converts down, keeping 18 where that fails: "auto" takes
    the TorchScript exporter, which writes the opset asked for; "dynamo" refuses. The oldest opset taken, 11,
    exports every head, with a dynamic batch and a padded grid."""
    model = perturbed(swinv2.Swinv2ForImageClassification, num_labels=3)
    path = tmp_path / "opset17.onnx"
    assert export_onnx(model, path, opset=17) == "torchscript"
    assert [o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")] == [17]
    x = photo_batch(["coffee"], 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(run(path, x)[0], model(x).logits.numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"writes opset 18 and newer, not 17: use exporter='torchscript'"):
        export_onnx(model, tmp_path / "dynamo17.onnx", opset=17, exporter="dynamo")
    path = tmp_path / "opset11.onnx"  # the oldest it takes, for every head
    for cls in (swinv2.Swinv2ForImageClassification, swinv2.Swinv2ForMaskedImageModeling, swinv2.Swinv2Backbone):
        reference = perturbed(cls)
        assert export_onnx(reference, path, opset=11, image_size=(36, 28), dynamic_batch=True) == "torchscript"
        x = photo_batch(["coffee", "astronaut", "chelsea"], 36, 28)
        with torch.no_grad():
            expected = reference(x)[0]
        expected = expected[0] if isinstance(expected, tuple) else expected
        np.testing.assert_allclose(run(path, x)[0], expected.numpy(), atol=1e-4, rtol=0)
    assert sorted(os.listdir(tmp_path)) == ["opset11.onnx", "opset17.onnx"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--opset", "99"], r"--opset: opset 99 is not one Swin V2 exports to: use 11-\d+"),
    (["--opset", "-1"], r"--opset: opset -1 is not one"),
    (["--opset", "17", "--exporter", "dynamo"], r"--opset: the dynamo ONNX exporter writes opset 18 and newer"),
])
def test_a_bad_opset_is_an_argument_error_found_before_the_model_is_loaded(tmp_path, capsys, flags, message):
    import re

    # the model does not exist: the opset is what is reported, with the status of bad arguments
    assert cli.main(["export", str(tmp_path / "no-model"), str(tmp_path / "a.onnx"), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "no-model" not in err, err


@pytest.mark.parametrize("failure", ["read-only", "full"])
def test_a_write_failure_is_named_and_does_not_fall_back_to_the_other_exporter(tmp_path, capsys, monkeypatch,
                                                                               failure):
    """The TorchScript exporter would fail the same way (read-only), or write silently what was not asked for
    (a disk that dynamo filled, then freed): the write error is reported, exit 1, and nothing is left."""
    import errno
    import tempfile
    import warnings

    model = tmp_path / "model"
    perturbed(swinv2.Swinv2ForImageClassification, num_labels=3).save_pretrained(model)
    if failure == "read-only":
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out" / ".a.onnx.x.tmp"))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("swinv2.export._export_dynamo", full)

    def not_expected(*args, **kwargs):
        raise AssertionError("fell back to the TorchScript exporter")

    monkeypatch.setattr("swinv2.export._export_torchscript", not_expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "falling back" warning either
        assert cli.main(["export", str(model), str(tmp_path / "out" / "a.onnx")]) == 1
    err = capsys.readouterr().err
    reason = "Read-only file system): write elsewhere" if failure == "read-only" else "No space left on device"
    assert f"swinv2 export: error: could not write {tmp_path / 'out' / 'a.onnx'} ({reason}" in err, err
    assert ".tmp" not in err and "Nothing was left half-written" in err
    assert list((tmp_path / "out").glob("*")) == []


# ---------------------------------------------------------------------------------------------- deployment paths
def test_torch_onnx_torchscript_exporter_takes_the_model_as_it_is(tmp_path):
    """`torch.onnx.export(model, (x,), dynamo=False)` passes every forward parameter positionally: a keyword-only
    `interpolate_pos_encoding` made it fail (8 arguments for 7)."""
    model = perturbed(swinv2.Swinv2ForImageClassification)
    x = photo_batch(["astronaut", "coffee"], 32, 32)
    torch.onnx.export(model, (x,), tmp_path / "m.onnx", input_names=["pixel_values"], dynamo=False)
    with torch.no_grad():
        expected = model(x).logits
    np.testing.assert_allclose(run(tmp_path / "m.onnx", x)[0], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_export_and_forward_mode_ad_keep_to_plain_ops_where_onednn_would_run(monkeypatch):
    """On AVX-512 CPUs fp32 inference takes a fused oneDNN op of the package's own; torch.export's graph (read
    by other runtimes) and forward-mode AD must not (the graph held swinv2.onednn_linear, the tangent was
    None). Forced on here, whatever this CPU is."""
    import torch.autograd.forward_ad as fwAD

    from swinv2 import layers

    monkeypatch.setattr(layers, "_ONEDNN_FP32", True)
    model = perturbed(swinv2.Swinv2ForImageClassification)
    x, tangent = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        assert "onednn" not in str(program.graph)
        torch.testing.assert_close(program.module()(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)
        with fwAD.dual_level():
            assert fwAD.unpack_dual(model(fwAD.make_dual(x, tangent)).logits).tangent is not None


def test_bf16_autocast_on_a_cpu_without_bf16_compiles_and_exports(monkeypatch):
    """The fp32 fallback's one-time warning broke torch.compile(fullgraph=True) on its first call (dynamo cannot
    trace warnings.warn); torch.export under bf16 autocast gave a program that failed when run (an fp32 graph
    with bf16 expectations): exported graphs keep the bf16 they were asked for, as transformers'."""
    from swinv2 import modeling

    monkeypatch.setattr(modeling, "CPU_NATIVE_BF16", False)
    monkeypatch.setattr(modeling, "_warned_bf16", False)
    model = perturbed(swinv2.Swinv2ForImageClassification)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(x).logits.dtype == torch.float32  # the fallback
        program = torch.export.export(model, (x,), strict=True)
        logits = program.module()(x).logits
    assert logits.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(logits.float(), model(x).logits, rtol=0.1, atol=0.1)


def test_meta_device_dynamic_quantisation_and_fake_tensors():
    """Three ways deployment tools run a model: built on the meta device (big-model loading), Linear layers
    quantised dynamically (the position-bias MLP's quantised weight is a method), and a forward under
    FakeTensorMode (the finite-input check looked at values fake tensors do not have). Each used to fail."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        empty = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(**SMALL))
    assert all(p.device.type == "meta" for p in empty.parameters())

    model = perturbed(swinv2.Swinv2ForImageClassification)
    x = photo_batch(["astronaut", "coffee"], 32, 32)
    with torch.no_grad():
        expected = model(x).logits
    # Loaded into: the derived buffers (window coordinates, in no checkpoint) must be real numbers there too.
    for load in ("assign", "to_empty"):
        with torch.device("meta"):
            loaded = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(**SMALL)).eval()
        if load == "assign":
            loaded.load_state_dict(model.state_dict(), assign=True)
        else:
            loaded.to_empty(device="cpu").load_state_dict(model.state_dict())
        assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()]), load
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, expected, rtol=0, atol=0, msg=load)
    with torch.inference_mode():  # buffers made again here are still ordinary tensors: training may follow
        loaded.to("cpu")
    loaded.train()(x, labels=torch.tensor([0, 1])).loss.backward()
    quantised = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        got = quantised(x).logits
    assert (got - expected).abs().max() <= 0.1 * expected.abs().max()  # transformers': 1.3e-2 relative

    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
        assert model(mode.from_tensor(x)).logits.shape == (2, model.config.num_labels)


def test_an_output_that_names_a_folder_or_lies_in_a_file_is_refused(tmp_path, capsys):
    """`out/` (a folder that does not exist yet) was written as a file named `out`; a parent that is a file
    was reported as "File exists". Both are named, and nothing is written."""
    from swinv2.checkpoints import WriteError

    assert cli.main(["export", str(tmp_path / "no-model"), str(tmp_path / "newdir") + "/"]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err and not (tmp_path / "newdir").exists()
    model = perturbed(swinv2.Swinv2ForImageClassification, num_labels=3)
    with pytest.raises(WriteError, match=r"newdir/ ends with a separator, which names a folder"):
        export_onnx(model, str(tmp_path / "newdir") + "/")
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(WriteError, match=r"afile is a file, not a folder, so .*model\.onnx cannot be written in it"):
        export_onnx(model, tmp_path / "afile" / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
