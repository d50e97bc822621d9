"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_python_blocks_run(capsys):
    blocks = [b for b in python_blocks() if "CHECKPOINT" not in b]
    assert blocks, "README.md has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert "|--" in capsys.readouterr().out  # the examples print trees


def test_readme_analysis_example_runs(checkpoint, tiny_data, capsys):
    (block,) = [b for b in python_blocks() if "CHECKPOINT" in b]
    block = block.replace("runs/tiny_transformer/checkpoints/best.ckpt", str(checkpoint))
    block = block.replace('"data/tiny"', repr(str(tiny_data)))
    exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert out.count("log-probability") == 5
    assert "|--" in out


def test_readme_hpo_example_is_the_tiny_config():
    import yaml

    (block,) = re.findall(r"```yaml\n(base: .*?)```", README.read_text(), flags=re.DOTALL)
    shown = yaml.safe_load(block)
    config = yaml.safe_load((README.parent / "configs" / "hpo" / "tiny.yaml").read_text())
    for key, value in shown.items():
        assert config[key] == value, key
