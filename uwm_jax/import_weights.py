r"""Import pretrained PyTorch weights from local files into uwm_jax checkpoints.

  # A released UWM checkpoint (models.pt: LIBERO-90 pretrained, DROID pretrained/cotrained);
  # the config (DROID or LIBERO) is inferred from the weights' shapes.
  python -m uwm_jax.import_weights uwm --src=models.pt --out=/ckpt/uwm_libero90/checkpoints

  # A fresh model on a config whose ResNet-18 starts from torchvision ImageNet weights and
  # whose frozen codec is the SDXL VAE (a diffusers AutoencoderKL folder).
  python -m uwm_jax.import_weights init --config=configs/droid.py --vae=/weights/sdxl-vae \
      --resnet=/weights/resnet18-f37072fd.pth --out=/ckpt/droid_init/checkpoints

Both write a params-only checkpoint (`uwm_jax.runs.checkpoint.save_params_checkpoint`):
what evaluation and finetuning (`python -m uwm_jax.train --config.init_from=...`) read.

  # Next-obs latents of every dataset of a config, encoded once with a checkpoint's VAE
  # (uwm_jax.data.latent_cache; one folder per dataset under --out).
  python -m uwm_jax.import_weights latent_cache --config=configs/droid.py \
      --config.data.sources.droid.path=/data/uwm/droid_weird \
      --checkpoint=/ckpt/droid_init/checkpoints --out=/data/droid_latents
  # then train without the VAE (the same config overrides, the same codec params):
  python -m uwm_jax.train --config=configs/droid.py --workdir=/ckpt/uwm_droid \
      --config.data.sources.droid.path=/data/uwm/droid_weird \
      --config.init_from=/ckpt/droid_init/checkpoints \
      --config.data.latent_cache_dir=/data/droid_latents
"""

import argparse
import ast
import sys
from typing import Optional, Sequence

import jax
import numpy as np


def _count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes"):
    return True
  if text.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m uwm_jax.import_weights", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  uwm = sub.add_parser("uwm", help="a released PyTorch UWM checkpoint (models.pt)")
  uwm.add_argument("--src", required=True, help="the models.pt file")
  uwm.add_argument("--out", required=True, help="the `checkpoints` folder to write")
  uwm.add_argument("--config", default=None,
                   help="config file[:variant] to use instead of inferring DROID/LIBERO")
  uwm.add_argument("--scan_layers", type=_bool, default=None,
                   help="store DiT blocks stacked for nn.scan (default: the config's value)")
  init = sub.add_parser("init", help="fresh model + torchvision ResNet-18 and/or SDXL VAE")
  init.add_argument("--config", required=True, help="config file[:variant]")
  init.add_argument("--out", required=True, help="the `checkpoints` folder to write")
  init.add_argument("--vae", default=None, help="diffusers AutoencoderKL folder (SDXL VAE)")
  init.add_argument("--resnet", default=None, help="torchvision resnet18-*.pth")
  init.add_argument("--seed", type=int, default=None, help="init seed (default: config.seed)")
  cache = sub.add_parser("latent_cache", help="precompute next-obs VAE latents of a dataset")
  cache.add_argument("--config", required=True, help="config file[:variant] naming the data")
  cache.add_argument("--checkpoint", required=True,
                     help="`checkpoints` folder whose frozen codec params encode the frames")
  cache.add_argument("--out", required=True, help="cache root (one folder per dataset)")
  cache.add_argument("--batch_size", type=int, default=64, help="frames per VAE call")
  cache.add_argument("--process_index", type=int, default=0)
  cache.add_argument("--process_count", type=int, default=1)
  cache.epilog = ("Config fields are overridden as for `python -m uwm_jax.train`: "
                  "--config.FIELD=VALUE, e.g. --config.data.sources.droid.path=/data/x.")
  args, extra = parser.parse_known_args(argv)
  args.overrides = [a for a in extra if a.startswith("--config.")]
  unknown = [a for a in extra if not a.startswith("--config.")]
  if unknown or (args.overrides and args.command != "latent_cache"):
    parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
  return args


def apply_overrides(config, overrides: Sequence[str]):
  """`--config.FIELD=VALUE` arguments onto a config (VALUE read as a Python literal when it is
  one, else as a string; ConfigDict checks the type)."""
  for arg in overrides:
    key, sep, text = arg.partition("=")
    if not sep:
      raise SystemExit(f"{arg}: expected --config.FIELD=VALUE.")
    *parents, leaf = key[len("--config."):].split(".")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = config
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise SystemExit(f"{arg}: the config has no field {key[len('--'):]!r}.")
    node[leaf] = value
  return config


def convert_uwm(args: argparse.Namespace) -> str:
  from uwm_jax.runs.checkpoint import save_params_checkpoint
  from uwm_jax.weights import uwm_checkpoint
  out = uwm_checkpoint.convert_checkpoint(args.src, config=args.config,
                                          scan_layers=args.scan_layers)
  print(f"{args.src}: step {out.step}, matches {out.config_path}; "
        f"{_count(out.params):,} trained + {_count(out.frozen):,} frozen values; "
        f"action stats {'from its normalizer' if out.has_action_normalizer else 'identity'}.")
  return save_params_checkpoint(args.out, params=out.params, frozen=out.frozen,
                                config=out.config, dataset_stats=out.dataset_stats,
                                step=out.step)


def convert_init(args: argparse.Namespace) -> str:
  from uwm_jax.runs.checkpoint import save_params_checkpoint
  from uwm_jax.weights import pretrained, uwm_checkpoint
  if args.vae is None and args.resnet is None:
    raise SystemExit("init: give --vae and/or --resnet.")
  config = uwm_checkpoint.load_config(args.config)
  if args.seed is not None:
    config.seed = args.seed
  params, frozen = pretrained.init_with_pretrained(config, vae_dir=args.vae,
                                                   resnet_path=args.resnet)
  print(f"{args.config}: {_count(params):,} trained + {_count(frozen):,} frozen values "
        f"(ResNet: {args.resnet or 'random'}; VAE: {args.vae or 'random'}).")
  return save_params_checkpoint(args.out, params=params, frozen=frozen, config=config,
                                dataset_stats={}, step=0)


def build_cache(args: argparse.Namespace) -> str:
  from uwm_jax.data import latent_cache
  from uwm_jax.runs.checkpoint import load_params_checkpoint
  from uwm_jax.weights import uwm_checkpoint
  config = apply_overrides(uwm_checkpoint.load_config(args.config), args.overrides)
  _, frozen, ckpt_config, _ = load_params_checkpoint(args.checkpoint)
  if ckpt_config.model.codec != config.model.codec:
    raise SystemExit(f"latent_cache: the checkpoint's model.codec is "
                     f"{ckpt_config.model.codec!r}, the config's {config.model.codec!r}.")
  metas = latent_cache.build_latent_caches(config, frozen, args.out, batch_size=args.batch_size,
                                           process_index=args.process_index,
                                           process_count=args.process_count)
  for name, meta in metas.items():
    print(f"{name}: {len(meta['episodes'])} episodes cached")
  return args.out


def main(argv: Optional[Sequence[str]] = None) -> str:
  args = parse_args(argv)
  commands = {"uwm": convert_uwm, "init": convert_init, "latent_cache": build_cache}
  path = commands[args.command](args)
  print(f"Wrote {path}")
  return path


if __name__ == "__main__":
  main(sys.argv[1:])
