"""A converted LeRobot dataset as a training source, mapped onto the model's inputs.

`python -m uwm_jax.data.convert_lerobot` stores the dataset's cameras under their own keys
(e.g. "observation.images.front"), the state features concatenated as low-dim values and the
action, and records the mapping in conversion.json ("lerobot": camera keys, state keys and
widths, action key and width). The config entry (`source_configs.lerobot`) says how they feed
the model:

  cameras   dataset camera keys, one per model view in model.camera_keys order (a key may
            repeat; empty: the converted cameras in their order)
  state     dataset state keys making the low-dim input, in order (empty: all converted ones);
            used by models with model.low_dim_dim > 0
  action    the dataset's action key (empty: the converted one)

Widths: the action (A_d numbers) and the state (D_d) may be narrower than the model's
model.action_dim / model.low_dim_dim (a pretrained model of another robot): they are padded
with zeros, which normalise to 0 (a zero-range dimension); the policy server returns the first
A_d numbers. `resolve_fields` fills the entry's empty fields and its `state_widths` /
`action_width` from the converted dataset; training saves that resolved entry in its
checkpoints' config, which is where the policy server (`uwm_jax.policies.lerobot`) reads the
dataset's request keys and widths.
"""

import hashlib
import json
from typing import Dict

import numpy as np

from uwm_jax.data import filters as filters_lib
from uwm_jax.data.array_record_source import ArrayRecordSource, load_dataset_json

MAPPING_KEY = "lerobot"  # conversion.json's record of the mapping (written by convert_lerobot)
RESOLVED_FIELDS = ("cameras", "state", "action", "state_widths", "action_width")


def _override(name: str, field: str) -> str:
  return f"--config.data.sources.{name}.{field}"


def stored_mapping(name: str, meta: dict) -> dict:
  """The mapping the conversion recorded; a dataset converted otherwise is refused."""
  mapping = meta.get("conversion", {}).get(MAPPING_KEY)
  if mapping is None:
    raise ValueError(f"Dataset {name!r}: {meta.get('conversion', {}).get('source', 'it')} was not "
                     f"converted from a LeRobot dataset (write it with `python -m "
                     f"uwm_jax.data.convert_lerobot`, or use kind 'array_record').")
  return mapping


def resolve_fields(name: str, cfg) -> Dict[str, object]:
  """The entry's mapping with its empty fields filled from the converted dataset (see the
  module docstring); names the dataset does not hold are errors naming the override."""
  stored = stored_mapping(name, load_dataset_json(cfg.path, name))
  widths = dict(zip(stored["state"], stored["state_widths"]))
  cameras = tuple(cfg.get("cameras", ()) or stored["cameras"])
  unknown = [c for c in cameras if c not in stored["cameras"]]
  if unknown:
    raise ValueError(f"Dataset {name!r}: no camera {unknown} ({_override(name, 'cameras')}); "
                     f"{cfg.path} holds {stored['cameras']}.")
  state = tuple(cfg.get("state", ()) or stored["state"])
  unknown = [k for k in state if k not in widths]
  if unknown:
    raise ValueError(f"Dataset {name!r}: no state feature {unknown} ({_override(name, 'state')}); "
                     f"{cfg.path} holds {stored['state']} (convert with --state to add one).")
  action = cfg.get("action", "") or stored["action"]
  if action != stored["action"]:
    raise ValueError(f"Dataset {name!r}: the action is {stored['action']!r} in {cfg.path}, not "
                     f"{action!r} ({_override(name, 'action')}; convert with --action to change "
                     f"it).")
  fields = {"cameras": cameras, "state": state, "action": action,
            "state_widths": tuple(int(widths[k]) for k in state),
            "action_width": int(stored["action_width"])}
  for key in ("state_widths", "action_width"):
    given = cfg.get(key, None)
    if given and tuple(np.atleast_1d(given)) != tuple(np.atleast_1d(fields[key])):
      raise ValueError(f"Dataset {name!r}: {key} {given} in the config, {fields[key]} in "
                       f"{cfg.path}: the checkpoint was trained on other data.")
  return fields


def _pad(x: np.ndarray, width: int) -> np.ndarray:
  """(L, d) -> (L, width) float32, zeros on the right."""
  return np.pad(np.asarray(x, np.float32), ((0, 0), (0, width - x.shape[1])))


class LeRobotSource(ArrayRecordSource):
  """Episodes of a converted LeRobot dataset: the mapped cameras as the model's views, the
  mapped state and the action padded to the model's widths."""

  def __init__(self, name: str, cfg, model_cfg):
    fields = resolve_fields(name, cfg)
    self.mapping = fields
    views = len(model_cfg.camera_keys)
    cameras = fields["cameras"]
    if len(cameras) != views:
      example = tuple(cameras[i % len(cameras)] for i in range(views))
      raise ValueError(
          f"Dataset {name!r}: {len(cameras)} cameras {list(cameras)} for the model's {views} views "
          f"(model.camera_keys); name one camera per view, a camera may repeat, e.g. "
          f"{_override(name, 'cameras')}='{example}'.")
    meta = load_dataset_json(cfg.path, name)
    shape = tuple(model_cfg.image_shape)
    for cam in cameras:
      stored_shape = tuple(meta["image_shapes"][cam])
      if stored_shape != shape:
        raise ValueError(f"Dataset {name!r}: camera {cam!r} stores {stored_shape} images, "
                         f"model.image_shape is {shape}; convert with --image_shape="
                         f"{shape[0]},{shape[1]}.")
    self.action_width = fields["action_width"]
    self.model_action_dim = int(model_cfg.action_dim)
    if self.action_width > self.model_action_dim:
      raise ValueError(f"Dataset {name!r}: the action {fields['action']!r} has "
                       f"{self.action_width} numbers, more than model.action_dim = "
                       f"{self.model_action_dim}.")
    self.model_low_dim_dim = int(model_cfg.get("low_dim_dim", 0))
    stored = stored_mapping(name, meta)
    starts = np.concatenate([[0], np.cumsum(stored["state_widths"])]).astype(int)
    self._state_columns = np.concatenate(
        [np.arange(starts[stored["state"].index(k)], starts[stored["state"].index(k) + 1])
         for k in fields["state"]] or [np.zeros(0, int)])
    if self.model_low_dim_dim:
      if not len(self._state_columns):
        raise ValueError(f"Dataset {name!r}: the model takes {self.model_low_dim_dim} low-dim "
                         f"numbers (model.low_dim_dim) but {cfg.path} stores no state (convert "
                         f"with --state).")
      if len(self._state_columns) > self.model_low_dim_dim:
        raise ValueError(f"Dataset {name!r}: the state {list(fields['state'])} has "
                         f"{len(self._state_columns)} numbers, more than model.low_dim_dim = "
                         f"{self.model_low_dim_dim}.")
    super().__init__(name, cfg.path, cameras, shape, self.action_width, 0, False,
                     filters_lib.EpisodeFilter(), int(cfg.get("max_episodes", 0)),
                     bool(cfg.get("cache_decoded_frames", False)))

  @classmethod
  def from_config(cls, name: str, cfg, model_cfg) -> "LeRobotSource":
    return cls(name, cfg, model_cfg)

  def actions(self, episode: int) -> np.ndarray:
    """(L, model.action_dim) float32: the dataset's action, zero-padded."""
    return _pad(super().actions(episode), self.model_action_dim)

  def low_dim(self, episode: int):
    """(L, model.low_dim_dim) float32: the mapped state features, zero-padded; None for a
    model without low-dim input."""
    if not self.model_low_dim_dim:
      return None
    return _pad(super().low_dim(episode)[:, self._state_columns], self.model_low_dim_dim)

  def fingerprint(self) -> str:
    """The converted data plus the mapping and the model's widths (they shape the statistics)."""
    text = json.dumps([super().fingerprint(), self.mapping, self.model_action_dim,
                       self.model_low_dim_dim], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()

