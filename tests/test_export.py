"""The model out of PyTorch (python -m vgg16.export): ONNX files that onnxruntime runs to our logits, with the
metadata predict reads; and the Ascend training defaults, with a stand-in torch_npu (there is no NPU here)."""

import json
import types

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import make_image_folder
from safetensors.torch import save_file
from torchvision import models

from vgg16 import export, predict
from vgg16.hub import VGGClassifier

NAMES = ["cat", "dog", "eel"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small-head VGG11 folder as training exports it, and real images of its three classes."""
    base = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = VGGClassifier(arch="vgg11", num_classes=3, head="small", image_size=32, class_names=NAMES,
                          mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], interpolation="bilinear")
    model.save_pretrained(base / "model")
    return base / "model", make_image_folder(base / "data", n_train=1, n_val=4)


def _export(capsys, *args) -> dict:
    code = export.main(list(map(str, args)))
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 0 and result["ok"], captured.err
    return result


def test_onnx_runs_to_our_logits_at_batch_1_and_7_with_its_metadata(small, tmp_path, capsys):
    folder, data = small
    out = tmp_path / "m.onnx"
    result = _export(capsys, "--model", folder, "--output", out, "--data", data)
    assert result["batches"][:2] == [1, 7] and result["images"] == 12 and result["batch"] == "dynamic"
    assert result["max_abs_diff"] <= 1e-4 and result["top1_agreement"] == 1.0 and result["opset"] >= 18
    onnx.checker.check_model(str(out))
    meta = onnxruntime.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["vgg16.class_names"]) == NAMES and meta["vgg16.input_size"] == "32"
    assert meta["vgg16.source"] == str(folder) and meta["vgg16.input"].startswith("float32")


def test_opset_11_for_atc_passes_the_checker_and_the_same_comparison(small, tmp_path, capsys):
    folder, data = small
    out = tmp_path / "atc.onnx"
    result = _export(capsys, "--model", folder, "--output", out, "--data", data, "--opset", "11", "--input-name",
                     "actual_input_1")
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == result["opset"] == 11
    assert [i.name for i in proto.graph.input] == ["actual_input_1"] and result["max_abs_diff"] <= 1e-4
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic


def test_with_normalize_takes_uint8_and_predict_on_the_file_prints_what_predict_on_the_folder_prints(small, tmp_path,
                                                                                                    capsys):
    folder, data = small
    out = tmp_path / "uint8.onnx"
    result = _export(capsys, "--model", folder, "--output", out, "--with-normalize", "--data", data)
    assert result["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(out))
    assert session.get_inputs()[0].type == "tensor(uint8)"
    images = [str(p) for p in sorted((data / "val").rglob("*.*"))]
    assert predict.main(["--model", str(folder), "--device", "cpu", *images]) == 0
    ours = capsys.readouterr().out
    assert predict.main(["--model", str(out), *images]) == 0
    assert capsys.readouterr().out == ours and len(ours.splitlines()) == 12


def test_a_224px_vgg11_with_a_replaced_head_exports_to_the_same_logits(small, tmp_path, capsys):
    _, data = small
    torch.manual_seed(1)
    save_file(models.vgg11(num_classes=3).state_dict(), str(tmp_path / "vgg11.safetensors"))
    result = _export(capsys, "--model", tmp_path / "vgg11.safetensors", "--output", tmp_path / "v.onnx",
                     "--data", data)
    assert (result["input_size"], result["resize"]) == (224, 256) and result["max_abs_diff"] <= 1e-4


def test_a_file_that_computes_something_else_fails_the_check(small, tmp_path, capsys, monkeypatch):
    folder, data = small
    real = export.export_onnx

    def tampered(model, path, **kwargs):  # the written file's last layer moved: what a broken exporter would do
        opset = real(model, path, **kwargs)
        proto = onnx.load(str(path))
        for init in proto.graph.initializer:
            if init.dims == [3]:
                values = onnx.numpy_helper.to_array(init) + 1.0
                init.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), init.name))
        onnx.save(proto, str(path))
        return opset

    monkeypatch.setattr(export, "export_onnx", tampered)
    assert export.main(["--model", str(folder), "--output", str(tmp_path / "bad.onnx"), "--data", str(data)]) == 1
    assert "onnxruntime's logits differ from ours" in capsys.readouterr().err


class StandInNpu(types.SimpleNamespace):
    """torch.npu as far as the Ascend defaults use it, recording the calls."""

    def __init__(self, internal_format=True):
        super().__init__(calls=[], config=types.SimpleNamespace(allow_internal_format=internal_format))

    def set_compile_mode(self, jit_compile):
        self.calls.append(("set_compile_mode", jit_compile))


def test_the_ascend_defaults_jit_compile_internal_format_and_hccl_timeouts():
    from vgg16.launch import ascend_setup
    from vgg16.resolve import config_of

    npu, env = StandInNpu(), {}
    said = ascend_setup(config_of(), npu, env)
    assert npu.calls == [("set_compile_mode", False)] and npu.config.allow_internal_format is True and env == {}
    assert said == ["jit_compile off", "allow_internal_format True (torch_npu's default)"]
    npu, env = StandInNpu(), {"HCCL_EXEC_TIMEOUT": "900"}
    said = ascend_setup(config_of(npu_jit_compile=True, npu_internal_format="off", dist_timeout=60.0), npu, env)
    assert npu.calls == [("set_compile_mode", True)] and npu.config.allow_internal_format is False
    assert env == {"HCCL_CONNECT_TIMEOUT": "3600", "HCCL_EXEC_TIMEOUT": "900"}  # the user's value stays
    assert "HCCL_CONNECT_TIMEOUT 3600 s (from --dist-timeout)" in said and "HCCL_EXEC_TIMEOUT 900 s (yours)" in said
    env = {}
    ascend_setup(config_of(dist_timeout=0.5), StandInNpu(), env)  # 30 s: raised to HCCL's least
    assert env == {"HCCL_CONNECT_TIMEOUT": "120", "HCCL_EXEC_TIMEOUT": "68"}


def test_an_npu_launch_applies_them_before_the_process_group_and_says_so(monkeypatch, tmp_path, capsys):
    """make_accelerator on a machine whose visible accelerator is an NPU (the stand-in; the run itself stays on the
    CPU here): the settings come before the Accelerator, and the start-up says them."""
    import os

    from vgg16 import launch
    from vgg16.resolve import config_of

    npu = StandInNpu()
    monkeypatch.setattr(launch, "visible_accelerators", lambda: {"npu": 1})
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.delenv("HCCL_CONNECT_TIMEOUT", raising=False)
    monkeypatch.delenv("HCCL_EXEC_TIMEOUT", raising=False)
    launch.make_accelerator(config_of(dist_timeout=20.0, output_dir=str(tmp_path)))
    assert npu.calls == [("set_compile_mode", False)] and os.environ["HCCL_EXEC_TIMEOUT"] == "1200"
    assert "note: NPU settings: jit_compile off; allow_internal_format True (torch_npu's default); " \
           "HCCL_CONNECT_TIMEOUT 1200 s (from --dist-timeout)" in capsys.readouterr().out
