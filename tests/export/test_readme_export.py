"""The README's onnxruntime example runs as written, on a file from ``lcag export``.

It is fenced as ``py`` (not ``python``), so ``tests/test_readme.py``, which runs the
``python`` blocks without a model, leaves it to this test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lcag.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
ONNX_FILE = "runs/tiny_transformer/model.onnx"

pytest.importorskip("onnxruntime")


def onnx_example() -> str:
    blocks = re.findall(r"```py\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if "onnxruntime" in b]
    return block


def test_readme_exports_the_onnx_file_it_runs():
    text = README.read_text()
    command = "lcag export --ckpt runs/tiny_transformer/checkpoints/best.ckpt --format onnx"
    assert f"{command} --out {ONNX_FILE}" in text
    assert ONNX_FILE in onnx_example()


def test_readme_onnxruntime_example_runs(checkpoint, tiny_data, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    assert main(["export", "--ckpt", str(checkpoint), "--format", "onnx", "--out", str(path)]) == 0
    block = onnx_example().replace(ONNX_FILE, str(path))
    block = block.replace('"data/tiny/', f'"{tiny_data}/')
    capsys.readouterr()
    exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "|--" in out  # a decoded tree
    assert "lcag.models.transformer.LCAGTransformer" in out
