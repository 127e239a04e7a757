"""The parts shared by the evaluation entry points (``python -m motfm.evaluate``, ``python -m motfm.audit``):
their inputs (:mod:`.inputs`), on-the-fly generation (:mod:`.generation`), the scoring of generated sets
(:mod:`.scorer`) and the errors that end a run with one line (:mod:`.errors`)."""
