"""Bridges to other code bases: models of the original MOTFM code (:mod:`motfm.interop.original`,
:mod:`motfm.interop.monai_keys`; the entry point is :mod:`motfm.import_motfm`)."""
