"""Reading checkpoints written by ``lcag fit``, with lcag's errors for bad files.

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, no code from the file runs.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from lcag.errors import CheckpointError

__all__ = ["REQUIRED_KEYS", "grammar_rerank_of", "load_checkpoint"]

REQUIRED_KEYS = ("state_dict", "hyper_parameters")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, checked to hold a model.

    Args:
        path: a ``.ckpt`` file from ``lcag fit``.
        map_location: where tensors go (``torch.load``'s argument).

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or lacks the model's
            ``state_dict`` and ``hyper_parameters`` (the message names the file).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, UnpicklingError
        if not zipfile.is_zipfile(path):
            reason = "not a complete zip archive, as torch.save writes"
        else:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint, the file is truncated or corrupt ({reason})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not an lcag checkpoint (holds {type(checkpoint).__name__})")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not an lcag checkpoint (no {', '.join(missing)})")
    if "model" not in checkpoint["hyper_parameters"]:
        raise CheckpointError(f"{path}: no model configuration in the checkpoint")
    return checkpoint


def grammar_rerank_of(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> Any:
    """The checkpoint's decay-grammar reranking (``grammar_rerank``:
    :class:`lcag.evidence.grammar_rerank.GrammarRerank`, loaded only where there is one), or
    ``None``.

    Raises:
        CheckpointError: ``grammar_rerank`` is malformed (the message names ``path``).
    """
    data = checkpoint.get("grammar_rerank")
    if not data:
        return None
    from lcag.console import one_line
    from lcag.evidence.grammar_rerank import GrammarRerank

    try:
        return GrammarRerank.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: grammar_rerank is malformed ({one_line(exc)})") from None
