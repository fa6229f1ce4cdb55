"""The core install (`pip install -c requirements.txt -e .`, no extras) trains, checkpoints and
resumes; everything optional is imported only where it is used (uwm_jax/extras.py).

Two halves:
  - here, in the full environment: the trainer's imports (`uwm_jax.check_install`) with every
    optional module blocked, so a top-level `import imageio` anywhere on the trainer's path fails
    at once; setup.cfg's extras agree with `uwm_jax.extras` and requirements.txt;
  - in `.venv-core` (`.ci/run` builds it with the core alone; skipped where it is absent):
    `python -m uwm_jax.check_install`, the tiny config trained for 2 steps and checkpointed, and a
    video-clip dataset refused with one line naming the extra. Its run to a bucket (killed,
    resumed bit-identically) is tests/test_runs_gcs.py's gcs_run, started from this venv.
"""

import configparser
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import CORE_PYTHON, REPO, run_cli
from uwm_jax import cli_errors, extras
from uwm_jax.runs import checkpoint as ckpt
from uwm_jax.runs import storage

# Distribution names in setup.cfg / requirements.txt where they differ from the import name.
DISTRIBUTIONS = {"tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets",
                 "imageio_ffmpeg": "imageio-ffmpeg"}
# The trainer's imports with the optional modules made missing (a meta path finder that refuses
# them, as in an environment that lacks them).
BLOCKED_IMPORT = """
import sys
from uwm_jax import check_install, extras

class Missing:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in extras.OPTIONAL_MODULES:
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Missing())
print(len(check_install.import_trainer()), "modules")
"""


def _requirement_name(line: str) -> str:
  return re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _setup_cfg():
  """(core distribution names, {extra: distribution names}) of setup.cfg."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))

  def names(text):
    return {_requirement_name(line) for line in text.splitlines() if line.strip()}

  extras_cfg = {k: names(v) for k, v in cfg["options.extras_require"].items()}
  return names(cfg["options"]["install_requires"]), extras_cfg


def test_the_trainer_imports_without_the_optional_modules():
  out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "modules" in out.stdout


def test_the_trainer_imports_are_read_from_train_py():
  from uwm_jax import check_install  # pylint: disable=import-outside-toplevel
  modules = check_install.trainer_imports()
  # Module level and inside main (after jax.distributed starts); submodules, not packages.
  assert modules[0] == "uwm_jax.train"
  assert {"uwm_jax.cli_config", "uwm_jax.training.loop", "uwm_jax.evaluation.evaluator",
          "uwm_jax.evaluation.offline_metrics", "uwm_jax.runs.checkpoint", "jax"} <= set(modules)


def test_extras_agree_with_setup_cfg_and_requirements():
  core, extras_cfg = _setup_cfg()
  with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
    pinned = {_requirement_name(line) for line in f if line.strip() and line[0] != "#"}
  for module, wanted in extras.EXTRAS.items():
    dist = DISTRIBUTIONS.get(module, module)
    assert dist not in core, f"{dist} is optional ({wanted}) but in install_requires"
    assert {e for e, names in extras_cfg.items() if dist in names} == set(wanted), module
  listed = set(core).union(*[names for e, names in extras_cfg.items() if e not in ("tpu", "cuda")])
  assert listed <= pinned, f"in setup.cfg, not in requirements.txt: {sorted(listed - pinned)}"


def test_a_missing_optional_module_names_its_extra():
  error = ModuleNotFoundError("No module named 'imageio'", name="imageio")
  assert cli_errors.readable_message(error) == (
      "No module named 'imageio' (an optional dependency: pip install -c requirements.txt "
      "-e '.[data]'; the eval extra also has it)")
  error = ModuleNotFoundError("No module named 'wandb.sdk'", name="wandb.sdk")
  assert cli_errors.readable_message(error).endswith("(an optional dependency: pip install wandb)")
  core = ModuleNotFoundError("No module named 'optax'", name="optax")  # a broken core install
  assert cli_errors.readable_message(core) == "No module named 'optax'"


def _core_venv():
  if not os.path.exists(CORE_PYTHON):
    pytest.skip("no core-only venv .venv-core (created by .ci/run: python3 -m venv .venv-core "
                "&& .venv-core/bin/pip install -c requirements.txt -e .)")
  return CORE_PYTHON


def test_the_core_venv_lacks_every_optional_module():
  """Else the tests below would prove nothing."""
  code = ("import importlib.util; from uwm_jax import extras; "
          "print([m for m in extras.OPTIONAL_MODULES if importlib.util.find_spec(m)])")
  out = subprocess.run([_core_venv(), "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == "[]"


def test_check_install_in_the_core_venv(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package
  out = subprocess.run([_core_venv(), "-m", "uwm_jax.check_install", "--platform=cpu"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(env, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "the trainer imports" in out.stdout and "jax 0.10.2 on cpu" in out.stdout, out.stdout


def _train_rows(workdir):
  rows = [json.loads(line)
          for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
  return [row for row in rows if row["split"] == "train"]


def _checkpoint_steps(workdir):
  return ckpt.finished_steps(ckpt.checkpoint_dir(workdir))


@pytest.mark.slow
def test_the_core_venv_trains_and_checkpoints(tmp_path):
  """The tiny config trained and checkpointed by the core venv's trainer into a local workdir.
  Into gs://bucket/run on a GCS emulator, killed with -9 and resumed from the bucket: the
  gcs_run fixture of tests/test_runs_gcs.py, which runs this venv's trainer."""
  python = _core_venv()
  workdir = str(tmp_path / "run")
  out = run_cli("uwm_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
                "--config.num_steps=2", "--config.train.save_every=2",
                "--config.train.log_every=1", "--config.train.eval_at_end=False",
                "--config.train.eval_every=0", "--config.train.progress_bar=False",
                "--config.train.host_huge_pages=False", python=python)
  assert out.returncode == 0, out.stderr[-3000:]
  assert _checkpoint_steps(workdir)[-1] == 2
  assert [row["step"] for row in _train_rows(workdir)] == [1, 2]
  assert storage.listdir(f"{workdir}/tensorboard")  # events through tensorboardX (core)


def test_a_video_dataset_in_the_core_venv_names_the_data_extra(tmp_path):
  python = _core_venv()
  clips = tmp_path / "clips"
  clips.mkdir()
  (clips / "a.mp4").write_bytes(b"\0" * 4096)
  config = tmp_path / "clips_config.py"
  config.write_text(
      "from configs import tiny\nfrom uwm_jax.data import source_configs\n\n\n"
      "def get_config():\n  c = tiny.get_config()\n"
      f"  c.data.sources.clips = source_configs.video_folder({str(clips)!r})\n  return c\n")
  out = run_cli("uwm_jax.train", f"--config={config}", f"--workdir={tmp_path / 'run'}",
                "--config.train.host_huge_pages=False", python=python)
  assert out.returncode == cli_errors.EXIT_STATUS, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1] == (
      "error: No module named 'imageio' (an optional dependency: pip install -c "
      "requirements.txt -e '.[data]'; the eval extra also has it)"), out.stderr[-3000:]
