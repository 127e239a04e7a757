"""Benchmark of the suite's networks, optionally against the original MOTFM stack: ``python -m motfm.bench``.

Modules: :mod:`~motfm.bench.timing` (alternating timers, FLOPs, the matmul peak, the machine),
:mod:`~motfm.bench.candidates` (what is measured: one network evaluation, Euler sampling, a training step),
:mod:`~motfm.bench.ours` (the suite's model built from its training config), :mod:`~motfm.bench.reference`
(MONAI Generative's ``DiffusionModelUNet`` + ``ControlNet`` at the same architecture, fed as the MOTFM code
feeds it), :mod:`~motfm.bench.memory` (peak training memory, one fresh process per measurement),
:mod:`~motfm.bench.report` (markdown) and :mod:`~motfm.bench.main` (the Hydra entry point).
"""
