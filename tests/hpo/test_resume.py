"""What makes a rerun of lcag-hpo a resume: the recorded settings and the out_dir lock."""

import pytest

from lcag.errors import ConfigError
from lcag.hpo.config import HPOConfig, SearchSettings
from lcag.hpo.search import SETTINGS, _claim_out_dir, _lock_out_dir
from tests.conftest import ROOT
from tests.hpo.test_space import TINY_SPACE


def test_a_resumed_search_must_keep_its_settings(tmp_path):
    base = str(ROOT / "configs" / "fit" / "tiny_transformer.yaml")
    cfg = HPOConfig(base=base, space=TINY_SPACE, out_dir=str(tmp_path))
    _claim_out_dir(tmp_path, cfg, ranks=2)
    assert (tmp_path / SETTINGS).is_file()
    _claim_out_dir(tmp_path, cfg, ranks=2)  # the same: resumes
    longer = HPOConfig(
        base=base,
        space=TINY_SPACE,
        out_dir=str(tmp_path),
        search=SearchSettings(evaluations_per_worker=5),
    )
    _claim_out_dir(tmp_path, longer, ranks=2)  # more evaluations: extends the search
    narrower = HPOConfig(
        base=base, space={**TINY_SPACE, "dim": {"low": 40, "high": 64}}, out_dir=str(tmp_path)
    )
    with pytest.raises(ConfigError, match=r"space\.dim: was \{'low': 16"):
        _claim_out_dir(tmp_path, narrower, ranks=2)
    with pytest.raises(ConfigError, match="ranks: was 2, now 4"):
        _claim_out_dir(tmp_path, cfg, ranks=4)


def test_one_search_per_out_dir(tmp_path):
    first = _lock_out_dir(tmp_path)
    with pytest.raises(ConfigError, match="in use by another lcag-hpo"):
        _lock_out_dir(tmp_path)
    first.close()  # the search ended (or died): the directory is free again
    _lock_out_dir(tmp_path).close()
