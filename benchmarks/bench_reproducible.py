"""Is a CPU training run bit-identical when the CPU's code paths differ?

Run: ``python benchmarks/bench_reproducible.py [--data data/tiny] [--epochs 3]``

Machines of one kind differ in CPU model (AMD or Intel, AVX2 or AVX-512), and the math
libraries pick their kernels by CPU: MKL's matrix products, ATen's vectorised kernels, oneDNN.
Different kernels sum in different orders, so float32 training drifts apart and the demo's
figures move by a point or so. This script trains the tiny Transformer for a few epochs under
environment settings that select other kernels on this very machine (as another CPU would),
with and without the pinning that ``make demo`` applies (the Makefile's ``PINNED_ENV``), and
prints a hash of the trained weights per setting: equal hashes within the pinned group mean the
run no longer depends on which kernels the CPU offers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pinned_env() -> dict[str, str]:
    """``PINNED_ENV`` from the Makefile: the settings ``make demo`` runs under."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("PINNED_ENV :="):
            return dict(item.split("=", 1) for item in line.split(":=", 1)[1].split())
    raise SystemExit("Makefile: no PINNED_ENV line")


PINNED_ENV = pinned_env()

# Settings that make this machine take the kernels another CPU would take.
OTHER_CPUS = {
    "this CPU": {},
    "MKL limited to AVX (an older CPU)": {"MKL_ENABLE_INSTRUCTIONS": "AVX"},
    "ATen without AVX2 (another vector width)": {"ATEN_CPU_CAPABILITY": "default"},
}


def weights_hash(checkpoint: Path) -> str:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train(data: Path, epochs: int, env: dict[str, str], out: Path) -> str:
    command = [
        str(Path(sys.executable).with_name("lcag")), "fit",
        "--config", str(ROOT / "configs" / "fit" / "tiny_transformer.yaml"),
        "--data.data_dir", str(data), "--trainer.max_epochs", str(epochs),
    ]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and k not in env}
    done = subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, cwd=out)
    if done.returncode != 0:
        raise SystemExit(f"lcag fit failed under {env}:\n{done.stderr[-3000:]}")
    return weights_hash(out / "runs" / "tiny_transformer" / "checkpoints" / "last.ckpt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "tiny")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        sys.exit(f"{args.data}: no dataset; run make demo or lcag-generate first")
    print(f"tiny Transformer, {args.epochs} epochs on {args.data}; sha256 of the weights:")
    for pinned in (False, True):
        print("pinned (" + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items()) + "):"
              if pinned else "library defaults:")  # fmt: skip
        hashes = set()
        for label, env in OTHER_CPUS.items():
            with tempfile.TemporaryDirectory() as tmp:
                setting = {**env, **PINNED_ENV} if pinned else env
                if pinned and "ATEN_CPU_CAPABILITY" in env:
                    continue  # pinning sets this one itself: nothing left to vary
                digest = train(args.data.resolve(), args.epochs, setting, Path(tmp))
            hashes.add(digest)
            print(f"  {label:45s} {digest}")
        print(f"  -> {'identical' if len(hashes) == 1 else 'DIFFERENT'} weights")


if __name__ == "__main__":
    main()
