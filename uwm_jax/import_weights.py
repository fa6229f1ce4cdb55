r"""Import pretrained PyTorch weights from local files into uwm_jax checkpoints.

Example (a released UWM checkpoint; the config, DROID or LIBERO, is inferred from the shapes):

  python -m uwm_jax.import_weights uwm --src=models.pt --out=/ckpt/uwm_libero90/checkpoints

  # A fresh model on a config whose ResNet-18 starts from torchvision ImageNet weights and
  # whose frozen codec is the SDXL VAE (a diffusers AutoencoderKL folder).
  python -m uwm_jax.import_weights init --config=configs/droid.py --vae=/weights/sdxl-vae \
      --resnet=/weights/resnet18-f37072fd.pth --out=/ckpt/droid_init/checkpoints

Both write a params-only checkpoint (`uwm_jax.runs.checkpoint.save_params_checkpoint`):
what evaluation and finetuning (`python -m uwm_jax.train --config.init_from=...`) read.

  # Next-obs latents of every dataset of a config, encoded once with a checkpoint's VAE
  # (uwm_jax.model.latent_cache_builder; one folder per dataset under --out).
  python -m uwm_jax.import_weights latent_cache --config=configs/droid.py \
      --config.data.sources.droid.path=/data/uwm/droid_weird \
      --checkpoint=/ckpt/droid_init/checkpoints --out=/data/droid_latents
  # then train without the VAE (the same config overrides, the same codec params):
  python -m uwm_jax.train --config=configs/droid.py --workdir=/ckpt/uwm_droid \
      --config.data.sources.droid.path=/data/uwm/droid_weird \
      --config.init_from=/ckpt/droid_init/checkpoints \
      --config.data.latent_cache_dir=/data/droid_latents

The command (uwm | init | latent_cache) comes first; every config field can be overridden with
--config.FIELD=VALUE as for `python -m uwm_jax.train`. Errors are one line (exit status 2).
"""

import sys

import jax
import numpy as np
from absl import app, flags

from uwm_jax import cli_config
from uwm_jax.model import latent_cache_builder
from uwm_jax.runs.checkpoint import save_params_checkpoint
from uwm_jax.weights import keymap, pretrained, uwm_checkpoint

COMMANDS = ("uwm", "init", "latent_cache")

_CONFIG = cli_config.define_config_flag(
    "Config file[:variant]: init and latent_cache need it; uwm infers DROID/LIBERO without it.")
_OUT = flags.DEFINE_string("out", None, "uwm, init: the `checkpoints` folder to write; "
                           "latent_cache: the cache root (one folder per dataset).")
_SRC = flags.DEFINE_string("src", None, "uwm: the released models.pt file.")
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", None, "uwm: store the DiT blocks stacked for "
                                 "nn.scan (default: the config's model.scan_layers).")
_VAE = flags.DEFINE_string("vae", None, "init: diffusers AutoencoderKL folder (SDXL VAE).")
_RESNET = flags.DEFINE_string("resnet", None, "init: torchvision resnet18-*.pth.")
_SEED = flags.DEFINE_integer("seed", None, "init: init seed (default: config.seed).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "latent_cache: `checkpoints` folder whose "
                                  "frozen codec params encode the frames.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "latent_cache: frames per codec call.")
_PROCESS_INDEX = flags.DEFINE_integer("process_index", 0, "latent_cache: this process's index.")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", 1, "latent_cache: number of processes.")
flags.mark_flags_as_required(["out"])


def _count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def import_uwm() -> str:
  if not _SRC.value:
    raise ValueError("uwm: give --src=models.pt.")
  out = uwm_checkpoint.convert_checkpoint(_SRC.value, config=_CONFIG.value,
                                          scan_layers=_SCAN_LAYERS.value)
  print(f"{_SRC.value}: step {out.step}, config {out.config_path or cli_config.config_arg()}; "
        f"{_count(out.params):,} trained + {_count(out.frozen):,} frozen values; "
        f"action stats {'from its normalizer' if out.has_action_normalizer else 'identity'}.")
  return save_params_checkpoint(_OUT.value, params=out.params, frozen=out.frozen,
                                config=out.config, dataset_stats=out.dataset_stats,
                                step=out.step)


def import_init() -> str:
  if _VAE.value is None and _RESNET.value is None:
    raise ValueError("init: give --vae and/or --resnet.")
  config = _config()
  if _SEED.value is not None:
    config.seed = _SEED.value
  params, frozen = pretrained.init_with_pretrained(config, vae_dir=_VAE.value,
                                                   resnet_path=_RESNET.value)
  print(f"{cli_config.config_arg()}: {_count(params):,} trained + {_count(frozen):,} frozen "
        f"values (ResNet: {_RESNET.value or 'random'}; VAE: {_VAE.value or 'random'}).")
  return save_params_checkpoint(_OUT.value, params=params, frozen=frozen, config=config,
                                dataset_stats={}, step=0)


def build_latent_cache() -> str:
  if not _CHECKPOINT.value:
    raise ValueError("latent_cache: give --checkpoint=<checkpoints folder>.")
  metas = latent_cache_builder.build_latent_caches_from_checkpoint(
      _config(), _CHECKPOINT.value, _OUT.value, batch_size=_BATCH_SIZE.value,
      process_index=_PROCESS_INDEX.value, process_count=_PROCESS_COUNT.value)
  for name, meta in metas.items():
    print(f"{name}: {len(meta['episodes'])} episodes cached")
  return _OUT.value


def _config():
  if _CONFIG.value is None:
    raise ValueError("this command needs --config=FILE[:variant].")
  return _CONFIG.value


def main(argv) -> None:
  commands = {"uwm": import_uwm, "init": import_init, "latent_cache": build_latent_cache}
  if len(argv) != 2 or argv[1] not in commands:
    raise app.UsageError(f"give one command, {' | '.join(COMMANDS)} (got {argv[1:]}).")
  try:
    path = commands[argv[1]]()
  except (FileNotFoundError, ValueError, keymap.WeightImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Wrote {path}")


if __name__ == "__main__":
  cli_config.run(main)
