"""Experiment runners on the embedded task (`python -m experiments.cotrain`, `python -m
experiments.pretrain_finetune`), run from a checkout: not part of the installed package."""
