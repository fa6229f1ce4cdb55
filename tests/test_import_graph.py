"""The layering of README "Architecture": no import points back (scripts/import_graph.py)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "import_graph.py")


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, "--check", *args], capture_output=True,
                        text=True, timeout=120)


def test_no_import_points_back():
  out = _run()
  assert out.returncode == 0, out.stdout + out.stderr
  assert "0 back-pointing imports" in out.stdout


def test_a_back_pointing_import_is_flagged(tmp_path):
  """Training importing evaluation (even inside a function) fails the check."""
  for path, text in {"uwm_jax/__init__.py": "",
                     "uwm_jax/training/__init__.py": "",
                     "uwm_jax/training/loop.py": "def f():\n  from uwm_jax.evaluation import x\n",
                     "uwm_jax/evaluation/__init__.py": "",
                     "uwm_jax/evaluation/x.py": "from uwm_jax.training import loop\n"}.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  out = _run(f"--root={tmp_path}")
  assert out.returncode == 1
  assert ("BACK-POINTING: uwm_jax.training.loop (train) imports uwm_jax.evaluation.x (evaluate)"
          in out.stdout)
  assert "1 back-pointing imports" in out.stdout


def test_serving_importing_evaluation_is_flagged(tmp_path):
  """Serving and evaluation are siblings: the server loads checkpoints through the policies
  layer, never through the evaluator."""
  for path, text in {"uwm_jax/__init__.py": "",
                     "uwm_jax/serving/__init__.py": "",
                     "uwm_jax/serving/server.py": "from uwm_jax.evaluation import evaluator\n",
                     "uwm_jax/evaluation/__init__.py": "",
                     "uwm_jax/evaluation/evaluator.py": "from uwm_jax.policies import session\n",
                     "uwm_jax/policies/__init__.py": "",
                     "uwm_jax/policies/session.py": ""}.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  out = _run(f"--root={tmp_path}")
  assert out.returncode == 1
  assert ("BACK-POINTING: uwm_jax.serving.server (serve) imports uwm_jax.evaluation.evaluator "
          "(evaluate)" in out.stdout)
  assert "1 back-pointing imports" in out.stdout
