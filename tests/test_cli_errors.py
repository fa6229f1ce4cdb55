"""Bad input to `python -m uwm_jax.train` / `uwm_jax.evaluate` / ... ends in one `error:` line
and exit status 2, before anything expensive is built (the real CLIs, as subprocesses, started
as a user starts them: no JAX_PLATFORMS). What the terminal shows is at most three lines: the
error and the log lines of the project's own progress, no libtpu probe, no library INFO."""

import time

import ml_collections
import pytest

from tests.helpers import REPO, start_cli
from uwm_jax import cli_errors


def test_ml_collections_unknown_field_reads_as_one_line():
  config = ml_collections.ConfigDict({"save_every": 1})
  with pytest.raises(AttributeError) as err:
    config.sav_every  # pylint: disable=pointless-statement
  msg = cli_errors.readable_message(err.value)
  assert msg == ("unknown config field 'sav_every' (did you mean \"save_every\" instead of "
                 "\"sav_every\"?)"), msg


# DROID without its data: the error names the field to set and the conversion that writes it.
DROID_WITHOUT_DATA = ("Dataset 'droid': config.data.sources.droid.path is not set; give "
                      "--config.data.sources.droid.path=DIR, a folder written by `python -m "
                      "uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid "
                      "--out=DIR")


def test_bad_inputs_end_in_one_error_line_each(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  tiny = f"--config={REPO}/configs/tiny.py"
  cases = {  # name -> (module, args, what the error line must say)
      "config file": ("uwm_jax.train", ["--config=configs/nope.py"],
                      "config file configs/nope.py does not exist"),
      "unknown field": ("uwm_jax.train", [tiny, "--config.train.sav_every=3",
                                          f"--workdir={tmp_path / 'w1'}"],
                        "unknown config field 'sav_every' (did you mean \"save_every\""),
      "mesh": ("uwm_jax.train", [tiny, "--config.train.mesh_shape=(3,1,1)",
                                 f"--workdir={tmp_path / 'w2'}"],
               "train.mesh_shape (3, 1, 1) has 3 devices"),
      "init_from": ("uwm_jax.train", [tiny, f"--config.init_from={tmp_path / 'missing'}",
                                      f"--workdir={tmp_path / 'w3'}"],
                    f"init_from: checkpoint folder {tmp_path / 'missing'} does not exist"),
      "workdir": ("uwm_jax.train", [tiny, f"--workdir={a_file}"], "is a file, not a folder"),
      "droid without data": ("uwm_jax.train", [f"--config={REPO}/configs/droid.py",
                                               f"--workdir={tmp_path / 'w4'}"],
                             DROID_WITHOUT_DATA),
      # A config variant (file.py:variant) is read, not taken for a missing file.
      "variant": ("uwm_jax.train", [f"--config={REPO}/configs/droid.py:dp",
                                    f"--workdir={tmp_path / 'w5'}"],
                  DROID_WITHOUT_DATA),
      "variant of a missing file": ("uwm_jax.train", ["--config=configs/nope.py:dp"],
                                    "config file configs/nope.py does not exist"),
      "libero without data": (
          "uwm_jax.train", [f"--config={REPO}/configs/libero_finetune.py:book_caddy",
                            f"--config.data.sources.book_caddy.path={tmp_path / 'none'}",
                            f"--workdir={tmp_path / 'w6'}"],
          (f"converted data folder '{tmp_path / 'none'}' (config.data.sources.book_caddy.path) "
           "does not exist; give --config.data.sources.book_caddy.path=DIR",
           "python -m uwm_jax.data.convert_libero", "--builder=libero_book_caddy --out=DIR")),
      "eval task": ("uwm_jax.evaluate", ["--env=libero/nope",
                                         f"--checkpoint_dir={tmp_path / 'no_checkpoints'}"],
                    "nope"),
      "eval field": ("uwm_jax.evaluate", [tiny, "--config.eval.num_episode=3",
                                          f"--checkpoint_dir={tmp_path / 'no_checkpoints'}"],
                     "unknown config field 'num_episode'"),
      "summarize config file": ("uwm_jax.summarize", ["--config=configs/nope.py"],
                                "config file configs/nope.py does not exist"),
  }
  t0 = time.time()
  procs = {name: start_cli(module, *args, as_user=True)
           for name, (module, args, _) in cases.items()}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, (name, err[-3000:])
    assert lines and lines[-1].startswith("error: "), (name, err[-3000:])
    errors = [line for line in lines if line.startswith("error: ")]
    wanted = cases[name][2] if isinstance(cases[name][2], tuple) else (cases[name][2],)
    assert len(errors) == 1 and all(w in errors[0] for w in wanted), (name, errors, err[-2000:])
    assert "Traceback" not in err, (name, err[-3000:])
    # All the terminal shows: the error and at most two lines of the run's own progress.
    shown = lines + [line for line in out.splitlines() if line.strip()]
    assert len(shown) <= 3, (name, shown)
    assert not [line for line in shown if "TPU" in line or "backend 'tpu'" in line], (name, shown)
  # Every check comes before building a train state (the DROID state alone is 4.9 GiB).
  assert time.time() - t0 < 240


def test_no_tpu_probe_even_in_the_verbose_log(tmp_path):
  """With every logger's INFO lines shown (--verbosity=0), still no sign that jax tried the
  TPU on this host (libtpu prints its probe itself, or jax logs "Unable to initialize backend
  'tpu'" at INFO when another process holds libtpu's lock)."""
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  proc = start_cli("uwm_jax.train", "--config=configs/tiny.py", f"--workdir={a_file}",
                   "--verbosity=0", as_user=True)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("error: "), err
  assert "backend 'tpu'" not in err + out and "TPU" not in err + out, err[-3000:]


def test_traceback_flag_shows_the_traceback(tmp_path):
  proc = start_cli("uwm_jax.train", "--config=configs/nope.py", "--traceback")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode != 0 and "Traceback" in err
