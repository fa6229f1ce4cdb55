"""ResNet-18 import: torchvision .pth (BatchNorm discarded, docs/model.md) and GroupNorm weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.helpers import rel_err  # pylint: disable=wrong-import-position
from benchmarks import torch_modules as ref  # pylint: disable=wrong-import-position
from uwm_jax.model.resnet import ResNet18GN  # pylint: disable=wrong-import-position
from uwm_jax.weights import keymap  # pylint: disable=wrong-import-position
from uwm_jax.weights import resnet as resnet_weights  # pylint: disable=wrong-import-position

WIDTH, FEATURES = 16, 32


def _randomize(module, scale=0.1):
  with torch.no_grad():
    for p in module.parameters():
      p.add_(scale * torch.randn_like(p))
    for name, b in module.named_buffers():
      if "running" in name:
        b.uniform_(0.5, 1.5)


def _flax_features(params, images):
  apply = jax.jit(ResNet18GN(FEATURES, WIDTH).apply)  # eagerly, each op compiles on its own
  return np.asarray(apply({"params": params}, jnp.asarray(images.numpy().transpose(0, 2, 3, 1))))


@pytest.fixture(scope="module")
def torchvision_pth(tmp_path_factory):
  """A torchvision-layout ResNet-18 (BatchNorm with statistics, 1000-way fc) as a .pth."""
  torch.manual_seed(0)
  net = ref.TorchResNet18(WIDTH, 1000, norm="bn")
  _randomize(net)
  path = str(tmp_path_factory.mktemp("resnet") / "resnet18-test.pth")
  torch.save(net.state_dict(), path)
  return path, net


def test_torchvision_import_discards_batchnorm(torchvision_pth):
  path, bn_net = torchvision_pth
  params = resnet_weights.load_torchvision_resnet18(path, feature_dim=FEATURES, width=WIDTH,
                                                    seed=3)
  flat = keymap.tree_paths(params)
  norms = [p for p in flat if p[-2] in ("bn1", "bn2", "downsample_1")]
  assert len(norms) == 2 * (1 + 8 * 2 + 3)  # stem + 2 per block + 3 downsample norms
  for path_ in norms:
    want = 1.0 if path_[-1] == "scale" else 0.0
    np.testing.assert_array_equal(flat[path_], want)
  # A fresh fc with PyTorch's default init: U(-1/sqrt(512/64*WIDTH...), ...).
  bound = 1 / np.sqrt(8 * WIDTH)
  kernel, bias = flat[("fc", "kernel")], flat[("fc", "bias")]
  assert kernel.shape == (8 * WIDTH, FEATURES)
  assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
  assert kernel.std() > 0.8 * bound / np.sqrt(3)

  # Parity: the reference's net = the torchvision convolutions + fresh GroupNorm(1, 0) + new fc.
  gn_net = ref.TorchResNet18(WIDTH, FEATURES, norm="gn")
  convs = {k: v for k, v in bn_net.state_dict().items()
           if k.endswith("weight") and v.dim() == 4}
  missing, _ = gn_net.load_state_dict(convs, strict=False)
  assert all(not k.endswith("weight") or "conv" not in k for k in missing)
  with torch.no_grad():
    gn_net.fc.weight.copy_(torch.from_numpy(kernel.T))
    gn_net.fc.bias.copy_(torch.from_numpy(bias))
  images = torch.rand(3, 3, 48, 40)
  with torch.no_grad():
    want = gn_net(images).numpy()
  assert rel_err(_flax_features(params, images), want) < 1e-4


def test_groupnorm_state_dict_parity():
  """The trained GroupNorm encoder of a UWM checkpoint: affines and fc are copied."""
  torch.manual_seed(1)
  net = ref.TorchResNet18(WIDTH, FEATURES, norm="gn")
  _randomize(net)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  params, used = resnet_weights.convert_state_dict(state, feature_dim=FEATURES, width=WIDTH,
                                                   from_torchvision=False)
  assert used == set(state)
  images = torch.rand(2, 3, 64, 64)
  with torch.no_grad():
    want = net(images).numpy()
  assert rel_err(_flax_features(params, images), want) < 1e-4


def test_wrong_architecture_names_the_key(torchvision_pth, tmp_path):
  path, bn_net = torchvision_pth
  state = bn_net.state_dict()
  cases = {
      "missing": ({k: v for k, v in state.items() if k != "layer3.1.conv2.weight"},
                  r"layer3\.1\.conv2\.weight"),
      "extra block (ResNet-34-like)": ({**state, "layer1.2.conv1.weight": torch.zeros(1)},
                                       r"layer1\.2\.conv1\.weight"),
      "other width": ({**state, "conv1.weight": torch.zeros(8, 3, 7, 7)}, r"conv1\.weight"),
      "no BatchNorm statistics": ({k: v for k, v in state.items() if "running" not in k
                                   and "num_batches" not in k}, r"bn1\.running_mean"),
  }
  for name, (bad, pattern) in cases.items():
    bad_path = str(tmp_path / "bad.pth")
    torch.save(bad, bad_path)
    with pytest.raises(keymap.WeightImportError, match=pattern):
      resnet_weights.load_torchvision_resnet18(bad_path, feature_dim=FEATURES, width=WIDTH)
    del name
