"""Studies: a grid of training runs and evaluations described in one YAML file, run end to end by
``python -m motfm.study <study.yaml>`` (see ``experiments/``)."""
