"""Exported models on the CPU: onnxruntime's events/s beside PyTorch's, both models.

Run: ``python benchmarks/bench_export.py [--data DIR] [--ckpt PATH ...] [--threads N]``

Per-pair class probabilities (the exported graph's output: normalisation, pair features, the
model, softmax; no decoding) for the test events of a ``configs/data/tiny.yaml`` dataset
(2..8 leaves), in batches of one leaf count (as ``Reconstructor.reconstruct`` batches them) of
1 and of 1,024 events. Rows: PyTorch as ``lcag.Reconstructor.probabilities`` runs it (the NRI
model through torch-geometric), PyTorch running the export graph (the NRI model's dense path),
onnxruntime on the ONNX file (CPU execution provider), and the TorchScript file. Without
``--ckpt`` the ``tiny_transformer.yaml`` and ``tiny_nri.yaml`` architectures are built
untrained with the dataset's normalisation: speed does not depend on the weights. The
runtimes take turns, ``--repeats`` times, and the best rate of each is printed (other work on
the machine slows some runs); every runtime's probabilities are checked against PyTorch's (the
largest difference is printed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def untrained_checkpoint(config_name: str, data: Path, out: Path) -> Path:
    """The architecture of ``configs/fit/<config_name>.yaml``, untrained, as a checkpoint."""
    import torch
    import yaml

    from lcag.data_gen.shards import read_manifest
    from lcag.models.base import LCAGModel
    from lcag.module import LCAGModule

    config = yaml.safe_load((ROOT / "configs" / "fit" / f"{config_name}.yaml").read_text())
    torch.manual_seed(0)
    module = LCAGModule(
        LCAGModel.from_config(config["model"]["model"]),
        pair_features=config["model"]["pair_features"],
        node_evidence="none",
    )
    stats = read_manifest(data)["normalisation"]
    module.feature_mean.copy_(torch.tensor(stats["mean"]))
    module.feature_std.copy_(torch.tensor(stats["std"]))
    path = out / f"{config_name}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def batches(events: dict[int, np.ndarray], size: int, per_size: int) -> list[np.ndarray]:
    """``per_size`` events of every leaf count (the test events repeated) in batches of
    ``size``, each batch of one leaf count."""
    out = []
    for xs in events.values():
        tiled = xs[np.arange(per_size) % len(xs)]
        out += [tiled[i : i + size] for i in range(0, per_size, size)]
    return out


def rate(run: Callable[[np.ndarray, np.ndarray], np.ndarray], work: list[np.ndarray]) -> float:
    """Events per second of ``run`` over the batches (after one warm-up batch)."""
    run(work[0], np.ones(work[0].shape[:2], dtype=bool))
    start = time.perf_counter()
    for x in work:
        run(x, np.ones(x.shape[:2], dtype=bool))
    return sum(len(x) for x in work) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a dataset from configs/data/tiny.yaml")
    parser.add_argument("--ckpt", type=Path, nargs="+", help="checkpoints (default: untrained)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--per-size", type=int, default=1024, help="events per leaf count")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, the best kept")
    args = parser.parse_args()
    import onnxruntime as ort
    import torch

    from lcag import Reconstructor
    from lcag.data import LCAGDataset
    from lcag.export.graph import ExportGraph
    from lcag.export.onnx import export_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from lcag.data_gen.config import load_config
            from lcag.data_gen.writer import generate_dataset

            data = Path(tmp) / "tiny"
            generate_dataset(load_config(ROOT / "configs/data/tiny.yaml"), data, progress=False)
        ckpts = args.ckpt or [
            untrained_checkpoint(name, data, Path(tmp)) for name in ("tiny_transformer", "tiny_nri")
        ]
        dataset = LCAGDataset(data, "test")
        by_size: dict[int, list[np.ndarray]] = {}
        for event in dataset.__getitems__(range(len(dataset))):
            by_size.setdefault(len(event["x"]), []).append(event["x"])
        events = {n: np.stack(xs).astype(np.float32) for n, xs in sorted(by_size.items())}
        print(f"# CPU, torch {torch.__version__}, onnxruntime {ort.__version__}, {threads} "
              f"threads; tiny test events ({min(events)}..{max(events)} leaves), per-pair "
              "probabilities, no decoding")  # fmt: skip
        print("| model | runtime | batch 1, events/s | batch 1,024, events/s | max diff |")
        print("|-------|---------|------------------:|----------------------:|---------:|")
        for ckpt in ckpts:
            onnx_file, script_file = Path(tmp) / "m.onnx", Path(tmp) / "m.pt"
            facts = export_checkpoint(ckpt, "onnx", onnx_file)
            export_checkpoint(ckpt, "torchscript", script_file)
            name = facts["model"]["class_path"].rsplit(".", 1)[1]
            reco = Reconstructor.from_checkpoint(ckpt)
            graph = ExportGraph.from_checkpoint(ckpt)
            session = ort.InferenceSession(
                str(onnx_file), options, providers=["CPUExecutionProvider"]
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                script = torch.jit.load(str(script_file))

            def torch_graph(x, m, module=graph):
                with torch.inference_mode():
                    return module(torch.from_numpy(x), torch.from_numpy(m)).numpy()

            runtimes = {
                "PyTorch (Reconstructor)": reco.probabilities,
                "PyTorch (export graph)": torch_graph,
                "onnxruntime": lambda x, m, s=session: s.run(None, {"x": x, "mask": m})[0],
                "TorchScript": lambda x, m, s=script: torch_graph(x, m, s),
            }
            check = batches(events, 64, 64)
            single, full = batches(events, 1, 40), batches(events, 1024, args.per_size)
            best: dict[str, list[float]] = {label: [0.0, 0.0] for label in runtimes}
            for _ in range(args.repeats):  # interleaved, best of: other work on the machine
                for label, run in runtimes.items():
                    best[label][0] = max(best[label][0], rate(run, single))
                    best[label][1] = max(best[label][1], rate(run, full))
            for label, run in runtimes.items():
                diff = max(
                    float(np.abs(run(x, np.ones(x.shape[:2], bool))
                                 - reco.probabilities(x, np.ones(x.shape[:2], bool))).max())
                    for x in check
                )  # fmt: skip
                one, many = best[label]
                print(f"| {name} | {label} | {one:,.0f} | {many:,.0f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
