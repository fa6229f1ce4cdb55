"""Print the imports between uwm_jax's layers (and the benchmarks/experiments on top) and flag any
that point back.

  python3 scripts/import_graph.py            # summary: one line per (from layer -> to layer)
  python3 scripts/import_graph.py --modules  # every module-to-module import
  python3 scripts/import_graph.py --check    # exit 1 if an import points back (the test runs this)

The layering (README "Architecture"): neutral layers first, then the pipeline stages in order.
A module may import the neutral layers and its own or an earlier stage, never a later one nor
a sibling (two stages of one rank: evaluation and serving both build on the policies layer
and never import each other); the entry points (the CLIs) sit on top and may import
anything of the package. Outside the installed package, `benchmarks/` and `experiments/` (run
from a checkout: `python -m benchmarks.data`) sit above it and may import any of it but not
each other, and `tests/` above them all: nothing in uwm_jax imports benchmarks, experiments or
tests, and benchmarks and experiments import nothing from tests. Imports inside
functions count as much as module-level ones (a late import is still a dependency); they are
listed separately so the late ones stay few and visible.
"""

import argparse
import ast
import collections
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "uwm_jax"
# The top-level packages of the checkout whose modules are checked, and (with tests) whose
# modules count as import targets.
CHECKED = (PACKAGE, "benchmarks", "experiments")
KNOWN = CHECKED + ("tests",)

# (layer, rank, module prefixes). Neutral layers import no pipeline stage (rank 0).
LAYERS = (
    ("neutral", 0, ("uwm_jax.config_base", "uwm_jax.cli_config", "uwm_jax.cli_errors",
                    "uwm_jax.extras", "uwm_jax.cli_logging", "uwm_jax.host_platform",
                    "uwm_jax.batch", "uwm_jax.dims", "uwm_jax.diffusion", "uwm_jax.tree_paths",
                    "uwm_jax.runs", "uwm_jax.envs")),
    ("data", 1, ("uwm_jax.data",)),
    ("model", 2, ("uwm_jax.model", "uwm_jax.sampling", "uwm_jax.weights")),
    ("train", 3, ("uwm_jax.training",)),
    # A checkpoint as a policy: per-robot transforms, observation history, batched sampler;
    # what the evaluator's rollouts and the policy server both run.
    ("policy", 4, ("uwm_jax.policies",)),
    # Siblings: the evaluator's rollouts and the policy server each run the policies layer.
    ("evaluate", 5, ("uwm_jax.evaluation",)),
    ("serve", 5, ("uwm_jax.serving",)),
    ("entry", 6, ("uwm_jax.train", "uwm_jax.evaluate", "uwm_jax.summarize",
                  "uwm_jax.import_weights", "uwm_jax.serve", "uwm_jax.compile",
                  "uwm_jax.check_install", "uwm_jax.__init__")),
    # Outside the installed package (a checkout only): scripts that print numbers and the
    # experiment runners, siblings, then the test suite (which imports both).
    ("benchmarks", 7, ("benchmarks",)),
    ("experiments", 7, ("experiments",)),
    ("tests", 8, ("tests",)),
)


def layer_of(module: str):
  """(name, rank) of the layer owning `module`; the longest matching prefix wins (the package
  itself, its `__init__.py`, is listed as `uwm_jax.__init__`)."""
  if module == PACKAGE:
    module = PACKAGE + ".__init__"
  best = None
  for name, rank, prefixes in LAYERS:
    for prefix in prefixes:
      if module == prefix or module.startswith(prefix + "."):
        if best is None or len(prefix) > best[2]:
          best = (name, rank, len(prefix))
  if best is None:
    raise ValueError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
  return best[0], best[1]


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(path: pathlib.Path):
  """Yield (imported module, line, is_module_level) for every import in the file of a module of
  KNOWN (uwm_jax, benchmarks, experiments, tests)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  top_level = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from uwm_jax.data import loader` imports the submodule uwm_jax.data.loader.
      names = [f"{node.module}.{alias.name}" for alias in node.names]
    else:
      continue
    for name in names:
      if name.split(".")[0] in KNOWN:
        yield name, node.lineno, id(node) in top_level


def collect(root: pathlib.Path = ROOT):
  """[(importer, imported, line, is_module_level)] over every module of CHECKED (those of the
  top-level packages present under `root`)."""
  edges = []
  paths = [p for top in CHECKED for p in sorted((root / top).rglob("*.py"))]
  for path in paths:
    src = module_name(path, root)
    for dst, line, top in imports_of(path):
      edges.append((src, dst, line, top))
  return edges


def back_pointing(edges):
  """The imports from a layer to a later one or a sibling (or from a neutral layer to any
  stage)."""
  bad = []
  for src, dst, line, top in edges:
    (src_layer, src_rank), (dst_layer, dst_rank) = layer_of(src), layer_of(dst)
    if dst_rank > src_rank or (dst_rank == src_rank and dst_layer != src_layer):
      bad.append((src, dst, line, top, src_layer, dst_layer))
  return bad


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--modules", action="store_true", help="list every import")
  parser.add_argument("--check", action="store_true", help="exit 1 on a back-pointing import")
  parser.add_argument("--root", default=str(ROOT), help="the folder holding uwm_jax/ (and "
                      "benchmarks/, experiments/)")
  args = parser.parse_args(argv)
  edges = collect(pathlib.Path(args.root))
  order = " -> ".join(name for name, _, _ in LAYERS)
  print(f"layers: {order}")
  counts = collections.Counter()
  late = collections.Counter()
  for src, dst, _, top in edges:
    key = (layer_of(src)[0], layer_of(dst)[0])
    (counts if top else late)[key] += 1
  for a, b in sorted(set(counts) | set(late), key=lambda k: (rank(k[0]), rank(k[1]))):
    print(f"  {a:>11} -> {b:<11} {counts[(a, b)]:3d} module-level, "
          f"{late[(a, b)]:3d} inside functions")
  if args.modules:
    for src, dst, line, top in edges:
      print(f"  {src} -> {dst}  (line {line}{'' if top else ', inside a function'})")
  bad = back_pointing(edges)
  for src, dst, line, top, a, b in bad:
    print(f"BACK-POINTING: {src} ({a}) imports {dst} ({b}) at line {line}"
          f"{'' if top else ' (inside a function)'}")
  print(f"{len(bad)} back-pointing imports")
  return 1 if (args.check and bad) else 0


def rank(layer_name: str) -> int:
  return next(r for name, r, _ in LAYERS if name == layer_name)


if __name__ == "__main__":
  sys.exit(main())
