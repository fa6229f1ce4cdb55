"""Forward-dynamics predictions decoded next to the real frames (paper Fig. 8 style).

  single_prediction_frames: a batch of windows (current obs + true actions) -> for each of the
    T_o next frames, a grid with one row per sample: [current | real next | predicted] views,
    under the labels "now | real | pred".
  trajectory_prediction_frames: a held-out trajectory, querying the model after every action
    chunk with the real current frames and the chunk of true actions; each query yields T_o
    frames: a row of real views (labelled "real") over a row of predicted ones ("pred"), so
    the video runs along the whole trajectory.

Real frames go through the model's eval transform (centre crop) so both sides have the same
size; predictions are decoded with `UnifiedWorldModel.decode_latent`.
"""

from typing import List

import jax
import numpy as np

from uwm_jax import batch as B_
from uwm_jax.evaluation.videos import grid, label_columns, label_rows

# Labels drawn on the videos (short: the embedded task's views are 32 px wide).
SINGLE_COLUMNS = ("now", "real", "pred")  # current frame | real next frame | predicted
TRAJECTORY_ROWS = ("real", "pred")


def _predict(model, fd_sampler, params, frozen, obs, actions, next_obs, rng, low_dim=None):
  """-> (current, real_next, predicted) float (B, V, T_o, h, w, 3) each. low_dim: normalised
  (B, T_o, D) low-dim observations (models with model.low_dim_dim > 0)."""
  k_sample, k_tf = jax.random.split(rng)
  batch = {B_.OBS: obs, B_.ACTION: actions}
  if low_dim is not None:
    batch[B_.LOW_DIM] = np.asarray(low_dim, np.float32)
  latent = fd_sampler(params, frozen, batch, k_sample)["latent"]
  predicted = np.asarray(model.decode_latent(frozen, latent))
  current, real_next = model.transform(obs, next_obs, k_tf, train=False)
  return np.asarray(current), np.asarray(real_next), predicted


def _views(x: np.ndarray) -> List[np.ndarray]:
  """(V, h, w, 3) -> list of V images."""
  return list(x)


def single_prediction_frames(model, fd_sampler, params, frozen, batch: dict, rng,
                             max_samples: int = 4) -> List[np.ndarray]:
  """`batch` in the `uwm_jax.batch` format (normalised actions) -> T_o video frames."""
  n = min(max_samples, batch[B_.OBS].shape[0])
  take = lambda k: np.asarray(batch[k][:n])
  low_dim = take(B_.LOW_DIM) if B_.LOW_DIM in batch else None
  current, real, pred = _predict(model, fd_sampler, params, frozen, take(B_.OBS),
                                 take(B_.ACTION), take(B_.NEXT_OBS), rng, low_dim)
  frames = []
  for t in range(real.shape[2]):
    rows = [_views(current[i, :, -1]) + _views(real[i, :, t]) + _views(pred[i, :, t])
            for i in range(n)]
    frames.append(label_columns(grid(rows), SINGLE_COLUMNS))
  return frames


def trajectory_queries(length: int, num_obs_frames: int, action_len: int) -> np.ndarray:
  """Steps t at which the model is queried: t = T_o-1, T_o-1+H_a, ... while the T_o frames
  after the chunk, t+H_a .. t+H_a+T_o-1, are still inside the trajectory."""
  first = num_obs_frames - 1
  last = length - action_len - num_obs_frames  # t + H_a + T_o - 1 <= length - 1
  return np.arange(first, last + 1, action_len)


def _predict_in_chunks(model, fd_sampler, params, frozen, obs, actions, next_obs, rng,
                       low_dim, chunk: int):
  """`_predict` over the queries `chunk` at a time, the last chunk padded with copies of its
  last query, so every sampler call has batch `chunk` (one compilation, shared with
  `single_prediction_frames` when chunk = its sample count)."""
  n = len(obs)
  outs = []
  for i, start in enumerate(range(0, n, chunk)):
    idx = np.minimum(np.arange(start, start + chunk), n - 1)
    pick = lambda x: None if x is None else x[idx]
    outs.append(_predict(model, fd_sampler, params, frozen, obs[idx], actions[idx],
                         next_obs[idx], jax.random.fold_in(rng, i), pick(low_dim)))
  return tuple(np.concatenate([o[k] for o in outs])[:n] for k in range(3))


def trajectory_prediction_frames(model, fd_sampler, params, frozen, frames: np.ndarray,
                                 actions: np.ndarray, rng, low_dim=None, *,
                                 chunk: int) -> List[np.ndarray]:
  """frames (L, V, H, W, 3) uint8, actions (L, A) normalised [, low_dim (L, D) normalised] ->
  video frames [real | predicted] along the trajectory (T_o frames per chunk). The model is
  queried `chunk` queries per sampler call (the evaluator passes `eval.prediction_samples`)."""
  T_o, H_a = model.dims.num_obs_frames, model.dims.action_len
  queries = trajectory_queries(len(frames), T_o, H_a)
  if not len(queries):
    raise ValueError(f"Trajectory of {len(frames)} steps is too short for one forward-dynamics "
                     f"query ({2 * T_o + H_a - 1} steps needed).")
  window = lambda t, lo, n: frames[t + lo:t + lo + n].transpose(1, 0, 2, 3, 4)  # (V, n, H, W, 3)
  obs = np.stack([window(t, 1 - T_o, T_o) for t in queries])
  next_obs = np.stack([window(t, H_a, T_o) for t in queries])
  chunk_actions = np.stack([actions[t:t + H_a] for t in queries]).astype(np.float32)
  low = None if low_dim is None else np.stack([low_dim[t + 1 - T_o:t + 1] for t in queries])
  _, real, pred = _predict_in_chunks(model, fd_sampler, params, frozen, obs, chunk_actions,
                                     next_obs, rng, low, chunk)
  out = []
  for q in range(len(queries)):
    for t in range(T_o):
      out.append(label_rows(grid([_views(real[q, :, t]), _views(pred[q, :, t])]),
                            TRAJECTORY_ROWS))
  return out
