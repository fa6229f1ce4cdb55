"""Names of pytree leaves, shared by the partition rules (training) and checkpoint checks (runs)."""


def path_name(path) -> str:
  """A jax key path (from `jax.tree_util.tree_flatten_with_path`) -> "a/b/c"."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)
