"""Read `torch.save`d files without the code that wrote them being importable.

The reference's `models.pt` pickles its normalizer objects (classes of the reference repository,
with `scale` and `offset` numpy arrays). `torch.load(weights_only=True)` refuses them and a plain
`torch.load` would need the reference package. `load_torch_file` uses an unpickler that builds
torch tensors, numpy arrays and standard containers as usual and turns every other class into an
`AttributeHolder` that only stores the pickled attributes. Nothing outside that allow-list is
imported or called, so an unknown or hostile global cannot run code.
"""

import builtins
import pickle
import types
from typing import Any, Dict, Tuple

# Globals imported for real: (module, name) pairs, or (module, "*") for every name, or
# (module, "_rebuild*") for names with that prefix. Anything else becomes an AttributeHolder.
_ALLOWED = frozenset({
    ("torch._utils", "_rebuild*"), ("torch._tensor", "_rebuild*"),
    ("torch.nn.parameter", "Parameter"), ("torch", "Size"), ("torch", "device"),
    ("collections", "OrderedDict"), ("copyreg", "_reconstructor"), ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.dtypes", "*"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
})
_ALLOWED_BUILTINS = frozenset({"object", "set", "frozenset", "tuple", "list", "dict", "slice",
                               "complex", "float", "int", "bool", "bytes", "bytearray", "str",
                               "range"})
_HOLDERS: Dict[Tuple[str, str], type] = {}


class AttributeHolder:
  """Stands in for a class that is not importable here; keeps what the pickle stored.

  `args`/`kwargs` hold constructor arguments (if the pickle called the class); attributes from
  the pickled state are set on the instance. `_pickled_class` names the original class.
  """
  _pickled_class = "?"

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
      state = {**(state[0] or {}), **(state[1] or {})}
    if isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self.state = state

  def __repr__(self):
    return f"AttributeHolder({self._pickled_class}, attrs={sorted(self.__dict__)})"


def _holder(module: str, name: str) -> type:
  key = (module, name)
  if key not in _HOLDERS:
    _HOLDERS[key] = type(name, (AttributeHolder,), {"_pickled_class": f"{module}.{name}"})
  return _HOLDERS[key]


def _is_allowed(module: str, name: str) -> bool:
  if (module, name) in _ALLOWED or (module, "*") in _ALLOWED:
    return True
  if name.startswith("_rebuild") and (module, "_rebuild*") in _ALLOWED:
    return True
  if module == "builtins":
    return name in _ALLOWED_BUILTINS
  if module == "torch":  # dtypes (torch.float32, ...) and storage types
    # Late: torch is optional (weight import and LIBERO only).
    import torch  # pylint: disable=import-outside-toplevel
    return "Storage" in name or isinstance(getattr(torch, name, None), torch.dtype)
  return False


class Unpickler(pickle.Unpickler):
  """Real globals for tensors/arrays/containers; AttributeHolder subclasses for the rest."""

  def find_class(self, module: str, name: str) -> Any:
    if _is_allowed(module, name):
      if module == "builtins":
        return getattr(builtins, name)
      return super().find_class(module, name)
    return _holder(module, name)


def _pickle_module() -> types.ModuleType:
  """A stand-in for the `pickle` module, as `torch.load(pickle_module=...)` expects."""
  mod = types.ModuleType("uwm_jax_safe_pickle")
  mod.Unpickler = Unpickler
  mod.load = lambda f, **kw: Unpickler(f, **kw).load()
  mod.__name__ = "uwm_jax_safe_pickle"
  return mod


def load_torch_file(path: str) -> Any:
  """`torch.load` of any file the reference wrote, on CPU, memory-mapped when possible."""
  # Late: torch is optional (weight import and LIBERO only).
  import torch  # pylint: disable=import-outside-toplevel
  kwargs = dict(map_location="cpu", weights_only=False, pickle_module=_pickle_module())
  try:
    return torch.load(path, mmap=True, **kwargs)
  except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
    if "mmap" not in str(e):
      raise
    return torch.load(path, **kwargs)


def holder_attributes(obj: Any) -> Dict[str, Any]:
  """Attributes of an unpickled object (also an nn.Module-like object's buffers/parameters)."""
  attrs = dict(getattr(obj, "__dict__", {}))
  for inner in ("_buffers", "_parameters"):
    if isinstance(attrs.get(inner), dict):
      attrs = {**attrs[inner], **attrs}
  return attrs

