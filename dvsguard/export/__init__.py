"""Export a trained spiking network to lava-dl netx for Loihi 2, and check it bit for bit.

* :mod:`~dvsguard.export.quantize`: BatchNorm and pooling folding, integer scaling (by the rules of
  :mod:`dvsguard.snn.fixed_point`, or with the scales a fixed-point checkpoint records).
* :mod:`~dvsguard.export.netx`: the netx HDF5 writer, manifest and resource table.
* :mod:`~dvsguard.export.resources`: the Loihi 2 neuro-core estimate (a model of Lava's compiler).
* :mod:`~dvsguard.export.intsim`: a bit-exact numpy simulator of netx files.
* :mod:`~dvsguard.export.verify`: runs a file in Lava (separate Python 3.10 environment).

Nothing here imports Lava; h5py and torch are imported by the submodules that need them.
"""
