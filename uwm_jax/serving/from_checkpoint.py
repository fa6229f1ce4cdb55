"""A policy server for a checkpoint: `make_server(checkpoint_dir, step=None, ...)`.

The checkpoint is loaded as the evaluator loads it (`uwm_jax.policies.inference_checkpoint`:
the given step or the newest that loads, in the inference layout); the server's options are
the ones given, and those not given that sessions share with evaluation (exec_steps,
temporal_ensemble, ensemble_decay, seed) come from the checkpoint's `eval` section; the robot's
transforms are `--robot`'s or the one its config names (`uwm_jax.policies.robot_for_config`).
"""

import dataclasses
import os
from typing import Optional

from uwm_jax import policies
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.policies import inference_checkpoint
from uwm_jax.serving.server import PolicyServer, ServerOptions


def make_server(checkpoint_dir: str, step: Optional[int] = None, *, robot: str = "",
                options: Optional[ServerOptions] = None, compute_dtype: str = "",
                **option_overrides) -> PolicyServer:
  """A PolicyServer for a checkpoint, loaded as the evaluator loads it. Options not given
  (exec_steps, temporal_ensemble, ensemble_decay, seed) default to the checkpoint's `eval`
  section, as in evaluation; `compute_dtype` ("" = the checkpoint's) as in
  `inference_checkpoint.load_checkpoint`."""
  loaded = inference_checkpoint.load_checkpoint(checkpoint_dir, step, compute_dtype=compute_dtype)
  config = loaded.config
  e = config.eval
  defaults = dict(exec_steps=int(e.exec_steps), temporal_ensemble=bool(e.temporal_ensemble),
                  ensemble_decay=float(e.ensemble_decay), seed=int(e.seed))
  given = dataclasses.asdict(options) if options is not None else {}
  merged = dict(dataclasses.asdict(ServerOptions()), **defaults)
  merged.update({k: v for k, v in given.items() if k not in defaults})
  merged.update({k: v for k, v in option_overrides.items() if v is not None})
  robot = robot or policies.robot_for_config(config)
  transforms = policies.make_transforms(robot, config, loaded.stats)
  workdir = os.path.dirname(loaded.directory)
  metadata = {"robot": robot, "config_name": config.get("name", "") or os.path.basename(workdir),
              "checkpoint_step": loaded.step, "checkpoint_dir": loaded.directory,
              "compute_dtype": config.model.compute_dtype}
  return PolicyServer(UnifiedWorldModel(config.model), config.diffusion, loaded.params,
                      loaded.frozen, transforms, metadata, ServerOptions(**merged))
