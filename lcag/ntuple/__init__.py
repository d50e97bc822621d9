"""Ntuples in and out: reconstruct every event of ROOT or Parquet files with a trained model.

    lcag-reconstruct --ckpt best.ckpt --input data.root:events --carry event --out reco.root

- :mod:`lcag.ntuple.sources`: the input files (``file.root:tree`` through uproot, ``.parquet``
  through pyarrow), read in chunks of entries into padded leaf arrays, every check naming the
  file, branch and entry.
- :mod:`lcag.ntuple.sinks`: the output file, ROOT (uproot) or Parquet (pyarrow), one chunk at a
  time, written under a temporary name and renamed when complete.
- :mod:`lcag.ntuple.parents`: parent arrays of many LCAGs at once, as
  :attr:`lcag.Reconstruction.tree` numbers their nodes.
- :mod:`lcag.ntuple.cli`: the ``lcag-reconstruct`` command.

uproot, awkward and pyarrow are optional (``pip install 'lcag[ntuple]'``) and imported lazily.
"""

from lcag.ntuple.parents import parents_from_lcag

__all__ = ["parents_from_lcag"]
