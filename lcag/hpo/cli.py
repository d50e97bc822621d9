"""``lcag-hpo``: search a fit config's hyperparameters with Propulate, on one or many MPI ranks.

    lcag-hpo --config configs/hpo/tiny.yaml
    mpiexec -n 4 lcag-hpo --config configs/hpo/tiny.yaml --out_dir runs/hpo/tiny4
    srun lcag-hpo --config configs/hpo/paper.yaml

Rerunning the same command resumes: finished evaluations are replayed, not refitted.
"""

from __future__ import annotations

import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from lcag.cli import quiet_known_warnings, tensorboard_without_tensorflow
from lcag.console import EXIT_INTERRUPTED, run_console
from lcag.hpo.config import Budget, HPOConfig, SearchSettings

__all__ = ["main", "parser"]


def parser() -> ArgumentParser:
    """The command line: ``--config`` plus every :class:`HPOConfig` field."""
    p = ArgumentParser(
        prog="lcag-hpo",
        description="Hyperparameter search over an lcag fit config with Propulate (MPI).",
        env_prefix="LCAG_HPO",
        default_env=False,
    )
    p.add_argument("--config", action=ActionConfigFile, help="an HPO config (configs/hpo/*.yaml)")
    p.add_class_arguments(HPOConfig, fail_untyped=True)
    return p


def main(args: list[str] | None = None) -> int:
    """Parse, run or resume the search; return the exit status."""
    quiet_known_warnings()
    tensorboard_without_tensorflow()
    return run_console("lcag-hpo", lambda: _search(args))


def _search(args: list[str] | None) -> int:
    p = parser()
    values = p.parse_args(args).as_dict()
    values.pop("config", None)
    try:
        cfg = HPOConfig(
            **{k: v for k, v in values.items() if k not in ("budget", "search")},
            budget=Budget(**values["budget"]),
            search=SearchSettings(**values["search"]),
        )
        from lcag.hpo.search import run_search

        results = run_search(cfg)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C during a fit into exit(1)
        print("lcag-hpo: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if results and not any(r.status == "ok" for r in results):
        print(
            f"lcag-hpo: every evaluation failed; see {cfg.out_dir}/trials/*/error.txt",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
