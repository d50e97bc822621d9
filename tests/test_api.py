"""The public API: what ``import lcag`` offers is pinned here."""

import lcag


def test_public_names_are_pinned():
    assert sorted(lcag.__all__) == sorted(
        [
            "DecayTree",
            "InvalidInputError",
            "InvalidLCAGError",
            "InvalidTreeError",
            "LCAGError",
            "Reconstructor",
            "__version__",
            "decode",
            "decode_argmax",
            "is_valid_lcag",
            "lcag_to_tree",
            "log_partition",
            "permute",
            "top_k",
            "tree_score",
            "tree_to_lcag",
            "tree_to_lcas",
        ]
    )
    for name in lcag.__all__:
        assert hasattr(lcag, name), name


def test_decoding_names_are_pinned():
    import importlib

    # lcag.decode is the function at the package's face; the module is lcag.decode's module
    assert sorted(importlib.import_module("lcag.decode").__all__) == [
        "EXACT_MAX_LEAVES",
        "decode",
        "decode_argmax",
        "log_partition",
        "pair_log_scores",
        "top_k",
        "tree_score",
    ]


def test_readme_names_import():
    from lcag import DecayTree, decode, lcag_to_tree, tree_to_lcag  # noqa: F401


def test_core_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, lcag; print('torch' in sys.modules or 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_generation_workers_load_neither_numba_nor_torch():
    """Decoding (numba) and Reconstructor (torch) load on first use, so a generation worker,
    which imports the writer alone, holds neither."""
    import subprocess
    import sys

    code = (
        "import sys, lcag.data_gen.writer; "
        "print(sorted(m for m in ('numba', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_decode_stays_the_function_after_its_subpackage_is_imported():
    import subprocess
    import sys

    code = (
        "import lcag, lcag.decode.exact, lcag.decode.topk; from lcag import decode; "
        "print(callable(lcag.decode), decode is lcag.decode, lcag.top_k.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "lcag.decode"]


def test_errors_subclass_the_standard_exceptions():
    assert issubclass(lcag.InvalidLCAGError, ValueError)
    assert issubclass(lcag.InvalidTreeError, ValueError)
    assert issubclass(lcag.InvalidInputError, ValueError)
    assert issubclass(lcag.errors.MissingDependencyError, ImportError)


def test_training_names_are_pinned_and_load_on_first_use():
    import lcag.training

    assert sorted(lcag.training.__all__) == [
        "HierarchicalDDP",
        "LowRankLinear",
        "OIALR",
        "tree_nll",
    ]
    for name in lcag.training.__all__:
        assert getattr(lcag.training, name).__name__ == name
