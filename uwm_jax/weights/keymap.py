"""Map PyTorch state dicts onto Flax parameter trees, driven by the Flax tree itself.

The Flax modules of `uwm_jax.model` are named after their PyTorch counterparts with every
`.<index>` written `_<index>` (`down_blocks.0.resnets.1` -> `down_blocks_0_resnets_1`), so the
PyTorch key of a Flax leaf is computed, not listed. A conversion walks the *template* (the shapes
`jax.eval_shape(module.init, ...)` gives), looks each leaf's key up in the state dict, converts
its layout and checks its shape; missing keys, shape mismatches and keys the template does not
use are errors that name the key.

Layouts: Linear weight (out, in) -> Dense kernel (in, out); Conv2d weight (out, in, kh, kw) ->
Conv kernel (kh, kw, in, out); a Conv3d patch projection (out, c, pt, ph, pw) -> Dense kernel
(c*pt*ph*pw, out) (`uwm_jax.model.patchify` flattens patches in that order); norm weight ->
`scale`.
"""

import re
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

Path = Tuple[str, ...]
# A state dict as numpy arrays (or anything `np.asarray` takes), keyed by PyTorch names.
StateDict = Mapping[str, object]


class WeightImportError(ValueError):
  """A source file does not fit the Flax model; the message names the offending key."""


def torch_module_name(path: Sequence[str]) -> str:
  """Flax module path -> PyTorch module name: ("encoder", "down_blocks_0_resnets_1", "conv1")
  -> "encoder.down_blocks.0.resnets.1.conv1"."""
  return ".".join(_INDEX.sub(lambda m: "." + m.group(1) + ("." if m.group(2) else ""), name)
                  for name in path)


_INDEX = re.compile(r"_(\d+)(_|$)")


def torch_leaf_name(leaf: str) -> str:
  """Flax parameter name -> PyTorch parameter name (kernel/scale -> weight)."""
  return {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)


def default_torch_key(path: Path) -> str:
  """Full PyTorch key of a Flax leaf path, e.g. (..., "conv1", "kernel") -> "....conv1.weight"."""
  if len(path) == 1:
    return path[0]
  return torch_module_name(path[:-1]) + "." + torch_leaf_name(path[-1])


def to_flax_layout(value: np.ndarray, leaf: str, target_shape: Tuple[int, ...]) -> np.ndarray:
  """Convert one PyTorch tensor to the layout of a Flax leaf of `target_shape`."""
  value = np.asarray(value)
  if leaf != "kernel":
    return value
  if len(target_shape) == 2:  # Dense: Linear (out, in), or a 1x1 conv / Conv3d patch projection.
    return value.reshape(value.shape[0], -1).T
  if len(target_shape) == 4 and value.ndim == 4:  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
    return value.transpose(2, 3, 1, 0)
  return value


def flax_shape(torch_shape: Tuple[int, ...], leaf: str, target_ndim: int) -> Tuple[int, ...]:
  """The shape `to_flax_layout` gives a tensor of `torch_shape` (no data needed)."""
  torch_shape = tuple(int(d) for d in torch_shape)
  if leaf != "kernel" or not torch_shape:
    return torch_shape
  if target_ndim == 2:
    return (int(np.prod(torch_shape[1:])), torch_shape[0])
  if target_ndim == 4 and len(torch_shape) == 4:
    return torch_shape[2:] + (torch_shape[1], torch_shape[0])
  return torch_shape


def torch_shape_hint(shape: Tuple[int, ...], leaf: str) -> Tuple[int, ...]:
  """The PyTorch shape of a Flax leaf (a Conv3d patch projection shows as its Linear shape)."""
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


def tree_paths(tree) -> Dict[Path, object]:
  """Nested dict -> {path tuple: leaf}."""
  flat = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[tuple(k.key for k in keypath)] = leaf
  return flat


def unflatten(flat: Mapping[Path, object]) -> dict:
  """{path tuple: leaf} -> nested dict."""
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  return tree


def convert_tree(state_dict: StateDict, template, *,
                 torch_key: Callable[[Path], str] = default_torch_key,
                 prefix: str = "", source: str = "the state dict",
                 fill: Optional[Callable[[Path, Tuple[int, ...]], Optional[np.ndarray]]] = None
                 ) -> Tuple[dict, set]:
  """Build a Flax tree shaped like `template` from `state_dict`.

  torch_key maps a Flax leaf path to its PyTorch key (without `prefix`). `fill(path, shape)` may
  return a value for a leaf that is not taken from the file (None = take it from the file).
  Returns (params as float32 numpy arrays, the set of state-dict keys used).
  Raises WeightImportError naming the key when one is missing or has the wrong shape.
  """
  out, used = {}, set()
  for path, spec in tree_paths(template).items():
    shape = tuple(spec.shape)
    if fill is not None:
      value = fill(path, shape)
      if value is not None:
        out[path] = np.asarray(value, np.float32).reshape(shape)
        continue
    key = prefix + torch_key(path)
    if key not in state_dict:
      raise WeightImportError(
          f"{source} has no key {key!r} (needed for Flax parameter {'/'.join(path)} of shape "
          f"{shape}); is it the right architecture?")
    raw = np.asarray(state_dict[key])
    value = to_flax_layout(raw, path[-1], shape)
    if tuple(value.shape) != shape:
      raise WeightImportError(
          f"{source}: key {key!r} has shape {tuple(raw.shape)}, which does not fit Flax parameter "
          f"{'/'.join(path)} of shape {shape}; is it the right architecture/config?")
    out[path] = value.astype(np.float32)
    used.add(key)
  return unflatten(out), used


def shape_problems(shapes: Mapping[str, Tuple[int, ...]], template, *,
                   torch_key: Callable[[Path], str] = default_torch_key, prefix: str = "",
                   skip: Callable[[Path], bool] = lambda path: False) -> Tuple[list, set]:
  """Check a {key: shape} listing against a template without touching data.

  Returns (problems: one message per missing key or wrong shape, naming the key; keys used).
  """
  problems, used = [], set()
  for path, spec in tree_paths(template).items():
    if skip(path):
      continue
    key = prefix + torch_key(path)
    if key not in shapes:
      problems.append(f"missing key {key!r}")
      continue
    used.add(key)
    got = flax_shape(shapes[key], path[-1], len(spec.shape))
    if got != tuple(spec.shape):
      problems.append(f"key {key!r} has shape {tuple(shapes[key])}, the model needs "
                      f"{torch_shape_hint(tuple(spec.shape), path[-1])}")
  return problems, used


def check_all_used(keys: Iterable[str], used: set, source: str,
                   ignore: Callable[[str], bool] = lambda k: False) -> None:
  """Raise WeightImportError naming the keys of a file that the conversion did not use."""
  unused = sorted(k for k in keys if k not in used and not ignore(k))
  if unused:
    more = f" (and {len(unused) - 5} more)" if len(unused) > 5 else ""
    raise WeightImportError(
        f"{source} has keys the model does not have: {unused[:5]}{more}; is it the right "
        f"architecture/config?")
