"""The diffusers AutoencoderKL import: parity with diffusers, old key names, clear errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from tests.helpers import rel_err  # pylint: disable=wrong-import-position
from uwm_jax.model.vae import AutoencoderKL  # pylint: disable=wrong-import-position
from uwm_jax.weights import keymap  # pylint: disable=wrong-import-position
from uwm_jax.weights import vae as vae_weights  # pylint: disable=wrong-import-position

SMALL = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
             norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32, scaling_factor=0.13025)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def torch_vae():
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(**SMALL).eval()
  with torch.no_grad():  # move every parameter (norm affines and biases too) off its init value
    for p in vae.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return vae


@pytest.fixture(scope="module")
def vae_folder(torch_vae, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("vae"))
  torch_vae.save_pretrained(folder, safe_serialization=True)
  assert os.path.isfile(os.path.join(folder, WEIGHTS))
  return folder


def _copy_folder(src, dst, *, config=None, state=None):
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config(cfg) if config else cfg, f)
  weights = safetensors_numpy.load_file(os.path.join(src, WEIGHTS))
  safetensors_numpy.save_file(state(weights) if state else weights, os.path.join(dst, WEIGHTS))
  return dst


def test_encode_decode_match_diffusers(torch_vae, vae_folder):
  params, kwargs = vae_weights.load_diffusers_vae(vae_folder, require_sdxl=False)
  assert kwargs == dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4)
  module = AutoencoderKL(**kwargs)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32)
  z = rng.normal(size=(2, 4, 16, 24)).astype(np.float32)
  with torch.no_grad():
    posterior = torch_vae.encode(torch.from_numpy(x)).latent_dist
    decoded = torch_vae.decode(torch.from_numpy(z)).sample.numpy()
  apply = jax.jit(module.apply, static_argnames="method")  # eagerly, each op compiles alone
  mean, logvar = apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)),
                       method=AutoencoderKL.encode)
  out = apply({"params": params}, jnp.asarray(z.transpose(0, 2, 3, 1)),
              method=AutoencoderKL.decode)
  assert rel_err(np.asarray(mean).transpose(0, 3, 1, 2), posterior.mean.numpy()) < 1e-4
  assert rel_err(np.asarray(logvar).transpose(0, 3, 1, 2), posterior.logvar.numpy()) < 1e-4
  assert rel_err(np.asarray(out).transpose(0, 3, 1, 2), decoded) < 1e-4


def test_deprecated_attention_names_are_read(vae_folder, tmp_path):
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

  def rename(weights):
    out = {}
    for k, v in weights.items():
      for new, dep in old.items():
        k = k.replace(f"attentions.0.{new}.", f"attentions.0.{dep}.")
      out[k] = v
    return out

  folder = _copy_folder(vae_folder, str(tmp_path / "old"), state=rename)
  assert any(".query." in k for k in safetensors_numpy.load_file(os.path.join(folder, WEIGHTS)))
  want, _ = vae_weights.load_diffusers_vae(vae_folder, require_sdxl=False)
  got, _ = vae_weights.load_diffusers_vae(folder, require_sdxl=False)
  for path, leaf in keymap.tree_paths(want).items():
    np.testing.assert_array_equal(keymap.tree_paths(got)[path], leaf)


def test_missing_key_is_named(vae_folder, tmp_path):
  key = "decoder.up_blocks.1.resnets.0.conv2.weight"
  folder = _copy_folder(vae_folder, str(tmp_path / "missing"),
                        state=lambda w: {k: v for k, v in w.items() if k != key})
  with pytest.raises(keymap.WeightImportError, match=key.replace(".", r"\.")):
    vae_weights.load_diffusers_vae(folder, require_sdxl=False)


def test_extra_key_is_named(vae_folder, tmp_path):
  folder = _copy_folder(vae_folder, str(tmp_path / "extra"),
                        state=lambda w: {**w, "encoder.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(keymap.WeightImportError, match=r"encoder\.extra\.weight"):
    vae_weights.load_diffusers_vae(folder, require_sdxl=False)


def test_wrong_architecture_config_is_named(vae_folder, tmp_path):
  # Weights of a 1-resnet-per-block VAE described as 2 per block: the first absent key is named.
  folder = _copy_folder(vae_folder, str(tmp_path / "arch"),
                        config=lambda c: {**c, "layers_per_block": 2})
  with pytest.raises(keymap.WeightImportError, match=r"no key '[a-z_.0-9]*resnets\.[12]\."):
    vae_weights.load_diffusers_vae(folder, require_sdxl=False)
  folder = _copy_folder(vae_folder, str(tmp_path / "groups"),
                        config=lambda c: {**c, "norm_num_groups": 16})
  with pytest.raises(keymap.WeightImportError, match="norm_num_groups"):
    vae_weights.load_diffusers_vae(folder, require_sdxl=False)


def test_sdxl_required_by_default(vae_folder):
  with pytest.raises(keymap.WeightImportError, match="block_out_channels"):
    vae_weights.load_diffusers_vae(vae_folder)


def test_missing_folder_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    vae_weights.load_diffusers_vae(str(tmp_path))


def test_sdxl_config_is_accepted():
  """The stabilityai/sdxl-vae config.json fields (written out here) pass the SDXL check."""
  config = {"_class_name": "AutoencoderKL", "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
            "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
            "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025,
            "up_block_types": ["UpDecoderBlock2D"] * 4}
  vae_weights.check_sdxl(config)
  with pytest.raises(keymap.WeightImportError, match="scaling_factor"):
    vae_weights.check_sdxl({**config, "scaling_factor": 0.18215})
