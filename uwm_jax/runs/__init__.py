"""What a run leaves in its workdir: Orbax checkpoints and the metrics log.

A neutral layer: training writes it, evaluation, weight import and serving read it, and it
imports none of them.
"""
