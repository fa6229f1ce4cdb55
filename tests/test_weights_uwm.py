"""Released-checkpoint import: a `models.pt` written by a PyTorch reference
(docs/weights.md "State-dict layout of `models.pt`").

The file is written as the reference writes it (torch.save of model/optimizer/scheduler/scaler
state, normalizer objects of a class that is not importable when loading, step). Noise
predictions of the converted model must match the PyTorch net for both modalities at several
timestep pairs, with and without nn.scan over the blocks.
"""

import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import torch_modules as ref  # pylint: disable=wrong-import-position
from tests.helpers import rel_err, run_cli  # pylint: disable=wrong-import-position
from uwm_jax.cli_config import load_config  # pylint: disable=wrong-import-position
from uwm_jax.model.uwm import UnifiedWorldModel  # pylint: disable=wrong-import-position
from uwm_jax.weights import keymap  # pylint: disable=wrong-import-position
from uwm_jax.weights import uwm_checkpoint  # pylint: disable=wrong-import-position

ACTION_DIM = 7
TIMESTEP_PAIRS = ((0, 0), (10, 90), (90, 0), (99, 50))  # (t_action, t_obs)


def small_config():
  """A tiny UWM with the reference's SDXL VAE codec (32x32 crops -> 4x4 latents)."""
  cfg = load_config("configs/tiny.py")
  cfg.model.codec = "sdxl_vae"
  cfg.model.action_dim = ACTION_DIM
  cfg.model.resnet_width = 16
  return cfg


def _random_reference(model_cfg, seed=0):
  """The reference module tree with random weights (VAE values cheap: it is only copied)."""
  torch.manual_seed(seed)
  net = ref.reference_uwm(model_cfg, device="meta").to_empty(device="cpu")
  with torch.no_grad():
    for name, p in net.named_parameters():
      p.normal_(0.0, 0.05 if name.startswith("noise_pred_net") else 0.02)
      if name.startswith("obs_encoder.img_encoder") and ("bn" in name or "downsample.1" in name):
        p.add_(1.0 if name.endswith("weight") else 0.0)
    net.obs_encoder.vae.shift.zero_()
    net.obs_encoder.vae.scale.fill_(3.0)
  return net.eval()


def _normalizer_class(tmp_path):
  """A class standing in for the reference's normalizer, importable only while saving."""
  pkg = tmp_path / "refpkg_uwm"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "normalizer.py").write_text(textwrap.dedent("""
      class LinearNormalizer:
        def __init__(self, scale, offset):
          self.scale, self.offset = scale, offset
  """))
  sys.path.insert(0, str(tmp_path))
  try:
    from refpkg_uwm.normalizer import LinearNormalizer  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(str(tmp_path))
  return LinearNormalizer


def _forget_module(name):
  for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
    del sys.modules[mod]


def write_models_pt(path, net, normalizer=None, lowdim=None, step=1234):
  optimizer = torch.optim.AdamW(net.noise_pred_net.parameters(), lr=1e-4)
  torch.save({
      "model": net.state_dict(),
      "optimizer": optimizer.state_dict(),
      "scheduler": {"last_epoch": step, "base_lrs": [1e-4]},
      "scaler": {"scale": 65536.0, "growth_factor": 2.0},
      "action_normalizer": normalizer,
      "lowdim_normalizer": lowdim,
      "step": step,
  }, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("uwm")
  cfg = small_config()
  net = _random_reference(cfg.model)
  normalizer_cls = _normalizer_class(tmp)
  rng = np.random.default_rng(0)
  scale = rng.uniform(0.5, 2.0, ACTION_DIM).astype(np.float32)
  offset = rng.normal(size=ACTION_DIM).astype(np.float32)
  lowdim = normalizer_cls(np.ones(7, np.float32), np.zeros(7, np.float32))
  path = str(tmp / "models.pt")
  write_models_pt(path, net, normalizer_cls(scale, offset), lowdim)
  _forget_module("refpkg_uwm")  # the reference code is not importable when converting
  return dict(path=path, net=net, config=cfg, scale=scale, offset=offset)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_noise_predictions_match_pytorch(checkpoint, scan_layers):
  out = uwm_checkpoint.convert_checkpoint(checkpoint["path"], config=checkpoint["config"],
                                          scan_layers=scan_layers)
  assert out.config.model.scan_layers == scan_layers
  assert ("blocks" in out.params["noise_net"]["dit"]) == scan_layers
  model = UnifiedWorldModel(out.config.model)
  d = model.dims
  net = checkpoint["net"]
  rng = np.random.default_rng(1)
  B = 3
  images = rng.uniform(0, 1, (B, d.num_views, d.num_obs_frames) + d.crop_shape + (3,))
  action = rng.normal(size=(B, d.action_len, d.action_dim)).astype(np.float32)
  latent = rng.normal(size=(B,) + d.latent_shape).astype(np.float32)

  # The global condition: the ResNet on every (view, frame), concatenated in that order.
  cond = np.asarray(jax.jit(model.global_cond)(out.params, jnp.asarray(images, jnp.float32)))
  with torch.no_grad():
    flat = torch.from_numpy(images.reshape((-1,) + images.shape[3:]).transpose(0, 3, 1, 2))
    want_cond = net.obs_encoder.img_encoder.model(flat.float()).reshape(B, -1).numpy()
  assert rel_err(cond, want_cond) < 1e-4

  predict = jax.jit(model.predict_noise)
  for t_a, t_o in TIMESTEP_PAIRS:
    t_action = np.full((B,), t_a, np.int32)
    t_obs = np.array([t_o, (t_o + 37) % 100, (t_o + 71) % 100], np.int32)  # per-sample too
    eps_a, eps_o = predict(out.params, want_cond, action, t_action, latent, t_obs)
    with torch.no_grad():
      want_a, want_o = net.noise_pred_net(*[torch.from_numpy(np.asarray(x)) for x in
                                            (want_cond, action, t_action, latent, t_obs)])
    assert eps_o.shape == tuple(want_o.shape)
    assert rel_err(eps_a, want_a.numpy()) < 1e-4, (t_a, t_o)
    assert rel_err(eps_o, want_o.numpy()) < 1e-4, (t_a, t_o)


def test_vae_normalizers_and_step(checkpoint):
  out = uwm_checkpoint.convert_checkpoint(checkpoint["path"], config=checkpoint["config"])
  vae_state = {k[len(uwm_checkpoint.VAE_PREFIX):]: v.numpy()
               for k, v in checkpoint["net"].state_dict().items()
               if k.startswith(uwm_checkpoint.VAE_PREFIX)}
  np.testing.assert_array_equal(out.frozen["encoder"]["conv_in"]["kernel"],
                                vae_state["encoder.conv_in.weight"].transpose(2, 3, 1, 0))
  to_q = out.frozen["decoder"]["mid_block"]["attentions_0"]["to_q"]["kernel"]
  np.testing.assert_array_equal(to_q, vae_state["decoder.mid_block.attentions.0.to_q.weight"].T)
  scale, offset = checkpoint["scale"], checkpoint["offset"]
  stats = out.dataset_stats["action"]
  np.testing.assert_allclose(stats["min"], offset - scale, rtol=1e-6)
  np.testing.assert_allclose(stats["max"], offset + scale, rtol=1e-6)
  assert "low_dim" not in out.dataset_stats  # low-dim obs are not used by this model
  assert out.step == 1234 and out.has_action_normalizer


def test_no_action_normalizer_gives_identity_stats():
  """LIBERO checkpoints store action_normalizer None: actions were not normalised."""
  cfg = small_config()
  stats = uwm_checkpoint.dataset_stats({"action_normalizer": None}, cfg.model)
  assert stats == {"action": {"min": [-1.0] * ACTION_DIM, "max": [1.0] * ACTION_DIM}}


@pytest.mark.parametrize("spec", ["configs/libero.py", "configs/droid.py"])
def test_config_inferred_from_full_size_shapes(spec):
  """A reference model of the released size (built on the meta device: shapes only)."""
  cfg = load_config(spec)
  net = ref.reference_uwm(cfg.model, device="meta")
  shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
  assert uwm_checkpoint.infer_config(shapes)[0] == spec
  other = "configs/droid.py" if spec.endswith("libero.py") else "configs/libero.py"
  assert uwm_checkpoint.shape_problems(shapes, load_config(other).model)


def test_config_fitting_neither_is_named(checkpoint):
  shapes = {k: tuple(v.shape) for k, v in checkpoint["net"].state_dict().items()}
  with pytest.raises(keymap.WeightImportError) as e:
    uwm_checkpoint.infer_config(shapes)
  msg = str(e.value)
  assert "configs/droid.py" in msg and "configs/libero.py" in msg
  assert "noise_pred_net." in msg  # names keys


def test_missing_and_unexpected_keys_are_named(checkpoint):
  cfg = small_config()
  state = {k: v.numpy() for k, v in checkpoint["net"].state_dict().items()}
  key = "noise_pred_net.blocks.1.mlp.fc2.weight"
  with pytest.raises(keymap.WeightImportError, match=r"missing key '" + key.replace(".", r"\.")):
    uwm_checkpoint.convert_model_state_dict({k: v for k, v in state.items() if k != key},
                                            cfg.model)
  with pytest.raises(keymap.WeightImportError, match=r"unexpected key 'noise_pred_net\.blocks\.2"):
    uwm_checkpoint.convert_model_state_dict(
        {**state, "noise_pred_net.blocks.2.attn.qkv.weight": state[
            "noise_pred_net.blocks.1.attn.qkv.weight"]}, cfg.model)
  bad = dict(state)
  bad[uwm_checkpoint.VAE_SCALE_KEY] = np.full((1, 4, 1, 1), 2.0, np.float32)
  with pytest.raises(keymap.WeightImportError, match=r"obs_encoder\.vae\.scale"):
    uwm_checkpoint.convert_model_state_dict(bad, cfg.model)


def test_wrong_file_is_named(tmp_path):
  path = str(tmp_path / "not_uwm.pt")
  torch.save({"state_dict": {}}, path)
  with pytest.raises(keymap.WeightImportError, match="'model'"):
    uwm_checkpoint.convert_checkpoint(path)
  with pytest.raises(FileNotFoundError):
    uwm_checkpoint.convert_checkpoint(os.path.join(str(tmp_path), "absent.pt"))


def test_cli_writes_a_loadable_checkpoint(checkpoint, tmp_path):
  """`python -m uwm_jax.import_weights uwm` -> a params checkpoint `load_params_checkpoint` reads."""
  from uwm_jax.runs import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  config_file = tmp_path / "small.py"
  config_file.write_text(textwrap.dedent(f"""
      from uwm_jax.cli_config import load_config
      def get_config():
        c = load_config("configs/tiny.py")
        c.model.codec = "sdxl_vae"
        c.model.action_dim = {ACTION_DIM}
        c.model.resnet_width = 16
        return c
  """))
  out_dir = str(tmp_path / "checkpoints")
  out = run_cli("uwm_jax.import_weights", "uwm", f"--src={checkpoint['path']}",
                f"--out={out_dir}", f"--config={config_file}", "--noscan_layers")
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1].endswith("1234")
  params, frozen, config, stats = ckpt_lib.load_params_checkpoint(out_dir)
  want = uwm_checkpoint.convert_checkpoint(checkpoint["path"], config=str(config_file),
                                           scan_layers=False)
  assert config.model.codec == "sdxl_vae" and config.model.scan_layers is False
  assert config.model.action_dim == ACTION_DIM
  assert stats == want.dataset_stats
  for got_tree, want_tree in ((params, want.params), (frozen, want.frozen)):
    got_flat, want_flat = keymap.tree_paths(got_tree), keymap.tree_paths(want_tree)
    assert got_flat.keys() == want_flat.keys()
    for k in want_flat:
      np.testing.assert_array_equal(np.asarray(got_flat[k]), want_flat[k])


class _CallsOut:
  """Pickles as a call of os.system: loading it must not run the command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_unknown_globals_are_never_called(tmp_path):
  from uwm_jax.weights import torch_pickle  # pylint: disable=import-outside-toplevel
  marker = tmp_path / "ran"
  path = str(tmp_path / "hostile.pt")
  torch.save({"model": {"w": torch.ones(2)}, "evil": _CallsOut(marker)}, path)
  loaded = torch_pickle.load_torch_file(path)
  assert not marker.exists()
  assert isinstance(loaded["evil"], torch_pickle.AttributeHolder)
  assert loaded["evil"]._pickled_class.endswith(".system")  # pylint: disable=protected-access
  np.testing.assert_array_equal(loaded["model"]["w"].numpy(), [1.0, 1.0])
