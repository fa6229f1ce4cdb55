"""`python -m uwm_jax.import_weights init`: a fresh model whose ResNet-18 starts from torchvision."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_modules as ref  # pylint: disable=wrong-import-position
from tests.helpers import run_cli  # pylint: disable=wrong-import-position
from uwm_jax.data import latent_cache  # pylint: disable=wrong-import-position
from uwm_jax.runs import checkpoint  # pylint: disable=wrong-import-position
from uwm_jax.weights import keymap  # pylint: disable=wrong-import-position
from uwm_jax.weights import pretrained  # pylint: disable=wrong-import-position
from uwm_jax.weights import resnet as resnet_weights  # pylint: disable=wrong-import-position
from uwm_jax.cli_config import load_config  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def tiny_resnet_pth(tmp_path_factory):
  cfg = load_config("configs/tiny.py")
  torch.manual_seed(0)
  net = ref.TorchResNet18(cfg.model.resnet_width, 1000, norm="bn")
  path = str(tmp_path_factory.mktemp("init") / "resnet18-tiny.pth")
  torch.save(net.state_dict(), path)
  return path


def info_lines(stderr: str) -> list:
  """The INFO lines of a CLI's log (absl's format: `I<mmdd> <time> <thread> <file>:<line>] ...`)."""
  return [line for line in stderr.splitlines() if re.match(r"I\d{4} ", line)]


@pytest.fixture(scope="module")
def init_run(tiny_resnet_pth, tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("init_ckpt") / "checkpoints")
  out = run_cli("uwm_jax.import_weights", "init", "--config=configs/tiny.py",
                f"--resnet={tiny_resnet_pth}", f"--out={out_dir}", "--seed=5")
  assert out.returncode == 0, out.stderr[-3000:]
  return out_dir, out


@pytest.fixture(scope="module")
def init_checkpoint(init_run):
  return init_run[0]


def test_the_import_logs_no_library_info_lines(init_run):
  """Orbax logs ~60 INFO lines per save; only `--verbosity` shows them (test_latent_cache_cli)."""
  _, out = init_run
  assert not info_lines(out.stderr), out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1].startswith("Wrote ")


def test_init_checkpoint_with_imagenet_resnet(tiny_resnet_pth, init_checkpoint):
  params, frozen, config, stats = checkpoint.load_params_checkpoint(init_checkpoint)
  assert config.seed == 5 and stats == {} and frozen == {}  # pixels codec: no frozen params
  cfg = load_config("configs/tiny.py")
  want = resnet_weights.load_torchvision_resnet18(
      tiny_resnet_pth, feature_dim=cfg.model.image_feature_dim, width=cfg.model.resnet_width,
      seed=5)
  got_flat, want_flat = keymap.tree_paths(params["image_encoder"]), keymap.tree_paths(want)
  assert got_flat.keys() == want_flat.keys()
  for k in want_flat:
    np.testing.assert_array_equal(np.asarray(got_flat[k]), want_flat[k])
  assert "noise_net" in params


def test_init_rejects_mismatches(tiny_resnet_pth, tmp_path):
  cfg = load_config("configs/tiny.py")
  with pytest.raises(keymap.WeightImportError, match="model.codec"):
    pretrained.init_with_pretrained(cfg, vae_dir=str(tmp_path))
  cfg.model.resnet_width = 16
  with pytest.raises(keymap.WeightImportError, match=r"conv1\.weight"):
    pretrained.init_with_pretrained(cfg, resnet_path=tiny_resnet_pth)
  out = run_cli("uwm_jax.import_weights", "init", "--config=configs/tiny.py", f"--out={tmp_path}")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == "error: init: give --vae and/or --resnet."


def test_latent_cache_cli(init_checkpoint, tmp_path):
  """`import_weights latent_cache` encodes every dataset of a config with a checkpoint's codec."""
  root = str(tmp_path / "latents")
  common = ("latent_cache", "--config=configs/tiny.py", f"--checkpoint={init_checkpoint}",
            f"--out={root}")
  out = run_cli("uwm_jax.import_weights", *common, "--batch_size=16", "--verbosity=0",
                "--config.data.sources.synthetic.num_episodes=5")  # as the train CLI takes it
  assert out.returncode == 0, out.stderr[-3000:]
  # --verbosity=0: every logger's INFO lines, the libraries' too (Orbax restoring the codec).
  assert any("checkpoint" in line for line in info_lines(out.stderr)), out.stderr[-3000:]
  cfg = load_config("configs/tiny.py")
  cache = latent_cache.LatentCache(latent_cache.source_cache_dir(root, "synthetic"), cfg.model)
  assert len(cache.episodes) == 5
  out = run_cli("uwm_jax.import_weights", *common, "--config.data.no_such_field=1")
  assert out.returncode != 0 and "no_such_field" in out.stderr
  mean, std = cache.window_moments(3, 17)  # the last window of a 24-step episode
  assert mean.shape == std.shape == (2, 3, 2, 8, 8)
