"""The one definition of every config field; `configs/*.py` start from here and override.

Every field is read in exactly one place (named in the comment beside it). Shapes derived from
these fields (token counts, latent shape, condition width, window length) are computed only by
`uwm_jax.dims.model_dims`.
"""

import ml_collections

# The reference's hyperparameters (docs/model.md, docs/training.md "Reference hyperparameters").
DROID_CAMERA_KEYS = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
LIBERO_CAMERA_KEYS = ("agentview_rgb", "eye_in_hand_rgb")


def model_config() -> ml_collections.ConfigDict:
  """Model fields (read by `uwm_jax.model.*`)."""
  m = ml_collections.ConfigDict()
  # Observations. Camera order is the order of the V axis of every batch.
  m.camera_keys = DROID_CAMERA_KEYS
  m.image_shape = (180, 320)  # raw (H, W) of every camera as stored.
  m.resize_shape = (240, 320)  # (H, W) after the (non-uniform) resize.
  m.crop_shape = (224, 224)  # (H, W) after the crop.
  m.num_obs_frames = 2  # T_o: current frames and next frames.
  m.action_len = 16  # H_a: actions per chunk.
  m.action_dim = 10  # A.
  m.low_dim_dim = 0  # D_low per frame; 0 = low-dim obs not used.
  # Image augmentation (training only; eval uses a centre crop and no jitter).
  m.random_crop = True
  m.brightness = 0.2
  m.contrast = 0.2
  m.saturation = 0.2
  m.hue = 0.2
  # Image feature encoder.
  m.image_encoder = "resnet18"  # GroupNorm ResNet-18 shared by all views and frames.
  m.resnet_width = 64  # channels of the first stage (64 = torchvision ResNet-18).
  m.image_feature_dim = 768
  # Pixel coordinates as 2 extra input channels of the ResNet (CoordConv): position-sensitive
  # features from small images; conv1 then has no torchvision counterpart.
  m.image_coord_channels = False
  # Next-observation latent codec: "sdxl_vae" (frozen AutoencoderKL) or "pixels".
  m.codec = "sdxl_vae"
  m.pixels_downsample = 1  # pixels codec: average-pool factor.
  m.vae_sample_posterior = True  # sdxl_vae: sample the posterior (reference) or take its mean.
  m.vae_microbatch = 72  # sdxl_vae: images per VAE call (bounds activation memory).
  # Noise-prediction network.
  m.predict_next_obs = True  # False = the DP baseline: action tokens only, one timestep.
  m.embed_dim = 768
  m.timestep_embed_dim = 512
  m.depth = 12
  m.num_heads = 12
  m.mlp_ratio = 4
  m.num_registers = 8
  m.latent_patch_shape = (2, 4, 4)  # (t, h, w) patch of the next-obs latent.
  m.scan_layers = True  # nn.scan over the DiT blocks (faster compile; params stacked on axis 0).
  m.remat = False  # rematerialise each block in the backward pass.
  # AdaLN modulation kernels stored per condition part (kernel_0: observation rows, kernel_1:
  # timestep rows): the inference layout that checkpoints are loaded into
  # (model/block_layout.py); training and checkpoints keep one kernel per modulation.
  m.split_modulation = False
  m.compute_dtype = "float32"  # "bfloat16": bf16 activations/matmuls, fp32 params.
  m.attention_impl = "xla"  # jax.nn.dot_product_attention implementation: xla | cudnn.
  return m


def diffusion_config() -> ml_collections.ConfigDict:
  """Diffusion fields (read by `uwm_jax.diffusion` and `uwm_jax.sampling`)."""
  d = ml_collections.ConfigDict()
  d.num_train_steps = 100
  d.num_inference_steps = 10
  d.beta_schedule = "squaredcos_cap_v2"
  d.clip_sample_range = 1.0  # x0 clipped to [-r, r] in every DDIM step; 0 = no clipping.
  # Timestep at which the modality that is marginalised out is held during sampling.
  # 90 = the reference (first inference timestep); 99 = T - 1, what video samples train with.
  d.marginal_timestep = 90
  d.conditional_timestep = 0  # Timestep given to a clean conditioning modality.
  return d


def optim_config() -> ml_collections.ConfigDict:
  """Optimizer fields (read by `uwm_jax.training.optimizer`)."""
  o = ml_collections.ConfigDict()
  o.learning_rate = 1e-4
  o.weight_decay = 1e-6
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.schedule = "constant"  # constant | cosine (linear warmup, then half cosine to 0).
  o.warmup_steps = 0
  o.grad_clip_norm = 0.0  # 0 = no clipping.
  return o


def data_config() -> ml_collections.ConfigDict:
  """Data fields (read by `uwm_jax.data.loader`; sources built by `uwm_jax.data.sources`;
  demo_* by `uwm_jax.data.demo_generation`)."""
  d = ml_collections.ConfigDict()
  # Datasets by name -> `uwm_jax.data.source_configs` entry (kind, weight, action_free, ...).
  # Mixture weights are relative; each sample carries its source's index (sorted names).
  d.sources = ml_collections.ConfigDict()
  d.seed = 0  # shuffling / mixing seed (the sample stream is a pure function of it).
  d.val_fraction = 0.05  # robot episodes held out per source (reference: 5%).
  d.split_seed = 0  # np.random.default_rng seed of the train/val episode split.
  d.normalize = True  # min-max normalise actions/low-dim to [-1, 1] (LIBERO: False).
  d.stats_path = ""  # JSON statistics to use instead of computing them (e.g. pretraining's).
  # grain worker processes per host: 0 = read in the main process; -1 = one per core this
  # process may use less two (the main process, the runtime), at most 32, and 0 below 8 cores
  # (`uwm_jax.data.loader.resolve_num_workers`; docs/data.md, "Feeding a big host").
  d.num_workers = -1
  d.read_threads = 8  # threads reading the windows of one batch (in each worker).
  d.prefetch_batches = 2  # batches read ahead per process (memory: a few batches).
  d.eval_window_stride = 1  # eval: every k-th window start of each validation episode.
  d.eval_max_windows = 0  # eval: cap on validation windows, evenly spaced (0 = all).
  # Latent cache root (`python -m uwm_jax.import_weights latent_cache --out=DIR`, one folder per
  # dataset; uwm_jax.data.latent_cache): "" = off. When set, training batches carry the cached
  # next-obs latent moments and the train step skips the VAE (next obs then not augmented:
  # eval transform); offline evaluation still encodes with the VAE.
  d.latent_cache_dir = ""
  # The embedded task's datasets, generated on first use by `python -m uwm_jax.train`
  # (uwm_jax.data.demo_generation): expert episodes of `demo_task` (an embedded task of
  # uwm_jax.envs) into data.sources[demo_task].path and action-free video episodes into
  # data.sources[demo_task + "_video"].path. 0 episodes = nothing generated.
  d.demo_task = ""
  d.demo_episodes = 0
  d.demo_video_episodes = 0
  # Std of the correlated noise added to the expert's executed actions in those robot episodes
  # (recovery data, envs/demos.py; the recorded actions stay the expert's). 0 = clean expert.
  d.demo_action_noise = 0.0
  # The same for the action-free video episodes (recorded without actions either way): 0 = the
  # clean expert's on-path states only; demo_action_noise's value = recorded exactly like the
  # robot episodes (configs/demo_cotrain.py:matched).
  d.demo_video_action_noise = 0.0
  return d


def train_config() -> ml_collections.ConfigDict:
  """Training-loop fields (read by `uwm_jax.training.loop` unless named otherwise).

  The workdir (`--workdir`) holds checkpoints/<step>/, metrics.jsonl, tensorboard/ and
  dataset_stats.json; a run started again with the same workdir resumes from its latest
  complete checkpoint.
  """
  t = ml_collections.ConfigDict()
  # Device mesh (uwm_jax.training.mesh): (data, fsdp, tensor) sizes; one -1 = the rest.
  t.mesh_shape = (-1, 1, 1)
  # Partition rules (uwm_jax.training.sharding): (regex over param paths, tactic), first match
  # wins; tactics replicate | fsdp | tensor_out | tensor_in. FSDP splits the larger of an
  # array's last two axes; arrays under fsdp_min_size elements stay replicated.
  t.partition_rules = (
      (r"attn/qkv/(kernel|bias)$", "tensor_out"),
      (r"mlp/fc1/(kernel|bias)$", "tensor_out"),
      (r"attn/proj/kernel$", "tensor_in"),
      (r"mlp/fc2/kernel$", "tensor_in"),
      (r".*", "fsdp"),
  )
  t.fsdp_min_size = 2**18
  # Loop cadence (in optimizer steps). Checkpoints, evaluation and logs also happen at the end.
  t.log_every = 50
  t.save_every = 5_000
  t.eval_every = 10_000  # offline evaluation on the validation split (0 = only at the end)
  t.eval_num_batches = 0  # validation batches per evaluation (0 = the whole split)
  t.eval_at_end = True
  # Checkpoints (uwm_jax.runs.checkpoint): keep the last K and every M-th step (0 = none).
  t.keep_last = 3
  t.keep_every = 50_000
  t.async_checkpointing = True
  # Exponential moving average of the params (0 = off); evaluation then uses the EMA.
  t.ema_decay = 0.0
  # Average the action loss over action-labelled samples only (True), or over the whole batch
  # with video samples regressing action noise at t = T-1 (False: the reference; docs/model.md,
  # "Training loss and the two timesteps").
  t.action_loss_labelled_only = False
  # Stop at the first non-finite loss/gradient; the state is left as it was before that step.
  t.nan_guard = True
  # With init_from: recompute the normalisation statistics from this run's data instead of
  # keeping the pretraining run's (the reference keeps them, docs/data.md).
  t.recompute_dataset_stats = False
  # Logging (uwm_jax.runs.metrics_writer).
  t.tensorboard = True
  t.wandb_project = ""  # non-empty: also log to Weights & Biases (needs `pip install wandb`)
  t.progress_bar = True
  t.peak_tflops_per_device = 0.0  # for MFU; 0 = look up by device kind (unknown: no MFU)
  # XLA options for the init, train-step and eval executables, e.g.
  # {"xla_backend_optimization_level": 0} (CPU tests: 3x faster compiles, slower steps).
  t.compiler_options = ml_collections.ConfigDict()
  # JAX's persistent compilation cache (a folder; "" = off): a rerun loads the compiled train
  # step and evaluation executables instead of compiling them again.
  t.compilation_cache_dir = ""
  # Re-execute with glibc's malloc on transparent huge pages (uwm_jax/runs/host_allocator.py):
  # XLA:CPU's per-step temporaries then cost ~70 page faults instead of ~35,000.
  t.host_huge_pages = True
  return t


def eval_config() -> ml_collections.ConfigDict:
  """Evaluation fields (read by `uwm_jax.evaluation.evaluator` unless named otherwise).

  `python -m uwm_jax.evaluate --checkpoint_dir=DIR` writes into `<workdir>/eval/`.
  """
  e = ml_collections.ConfigDict()
  e.seed = 0
  # Closed-loop rollouts (uwm_jax.evaluation.rollout): "" = none; names in
  # uwm_jax.envs: tabletop_push, tabletop_reach (+ _ood: out of distribution), libero/<task>.
  e.env = ""
  e.num_episodes = 50
  e.first_seed = 100_000  # episode k resets with seed first_seed + k (demos use seeds from 0)
  e.num_envs = 10  # envs stepped in lockstep; one batched policy call serves all of them
  e.exec_steps = 16  # actions executed open loop per chunk (16 in sim as the reference; 8 real)
  # ACT-style temporal ensembling of the policy's chunks (policies.session.ChunkEnsemble):
  # each executed action averages every chunk's prediction for that step (weights
  # exp(-ensemble_decay * i), i = 0 for the oldest). Pair it with a small exec_steps.
  e.temporal_ensemble = False
  e.ensemble_decay = 0.01
  e.max_steps = 0  # env steps per episode (0 = the env's default: embedded 100, LIBERO 1000)
  e.num_videos = 2  # rollouts saved as videos
  e.video_format = "mp4"  # mp4 | gif
  e.video_fps = 10
  e.random_baseline = False  # also roll out a uniform random policy (chance level)
  # LIBERO (uwm_jax.envs.libero_env).
  e.init_states = "seeded"  # seeded (np.random.seed(k); env.reset(), the reference) | fixed
  e.libero_ood = False  # the paper's OOD variant: init ranges +0.03 m, no background objects
  # Offline metrics on the validation split (docs/evaluation.md; needs data.sources).
  e.offline_metrics = True
  e.offline_num_batches = 0  # 0 = the whole split
  # Forward-dynamics videos: single predictions and one held-out trajectory (UWM only).
  e.prediction_videos = True
  e.prediction_samples = 4
  # Inverse-dynamics trajectory tracking (docs/evaluation.md) with the policy-only run beside it:
  # the embedded task tracks expert demos of held-out seeds; LIBERO reads `tracking_demos`
  # (a LIBERO *_demo.hdf5 file). 0 = off.
  e.tracking_episodes = 0
  e.tracking_demos = ""
  # `python -m uwm_jax.train` evaluates the final checkpoint when True (uwm_jax.train).
  e.after_training = False
  e.watch_interval_s = 60.0  # evaluate --watch: seconds between looks for new checkpoints
  return e


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_config()
  c.diffusion = diffusion_config()
  c.optim = optim_config()
  c.data = data_config()
  c.train = train_config()
  c.eval = eval_config()
  c.num_steps = 100_000  # Optimizer steps (also the length of the cosine schedule).
  c.batch_size = 144  # Global batch (reference: 36 per GPU x 4 GPUs).
  # Finetuning (`--config.init_from=RUN/checkpoints`): a `checkpoints` folder (or a step folder
  # inside one) of a pretraining run or of the weight import; params and codec params are
  # loaded from it (shapes must match), the optimizer state starts fresh.
  c.init_from = ""
  c.init_from_step = -1  # -1 = the latest step of init_from
  return c


# Accelerator presets: `--config=configs/droid.py:v5p-8` (or `:dp,v5p-8`). The settings
# `python -m uwm_jax.compile` compiled for that TPU topology (docs/launch.md, "Compiled
# for TPUs"): bf16 compute, unrolled DiT blocks (XLA then schedules across blocks, and its cost
# analysis sees every block), the mesh. Pair them with a latent cache (data.latent_cache_dir).
PRESETS = {
    "v4-8": {"train.mesh_shape": (4, 1, 1)},
    "v5e-8": {"train.mesh_shape": (8, 1, 1)},
    # FSDP: each chip updates a quarter of the AdamW state (data parallel updates all of it on
    # every chip): faster and smaller compiled for v5p-8 (docs/results/tpu-compile-estimates.md).
    "v5p-8": {"train.mesh_shape": (1, 4, 1)},
    # 32 chips at batch 144 (4.5 per chip, so not data parallel): FSDP x tensor parallel, the
    # fastest mesh compiled for v5p-64; a global batch of 36 per chip trains data parallel as
    # v5p-8's chips do (docs/results/tpu-compile-estimates.md).
    "v5p-64": {"train.mesh_shape": (1, 16, 2)},
}
PRESET_COMMON = {"model.compute_dtype": "bfloat16", "model.scan_layers": False}
VARIANTS = ("", "dp") + tuple(PRESETS)


def apply_preset(config: ml_collections.ConfigDict, name: str) -> None:
  for key, value in dict(PRESET_COMMON, **PRESETS[name]).items():
    section, field = key.split(".")
    config[section][field] = value


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
  """Apply named variants given after the config path, comma-separated
  (`--config=configs/droid.py:dp`, `--config=configs/droid.py:dp,v5p-8`).

  dp: the diffusion-policy baseline (docs/model.md) — the same network with action tokens only,
      one timestep (sinusoidal width 256 for the reference configs), no registers, no next-obs
      prediction.
  v4-8, v5e-8, v5p-8, v5p-64: the accelerator presets of `PRESETS`.
  """
  for part in [p for p in variant.split(",") if p] or [""]:
    if part not in VARIANTS:
      raise ValueError(f"Unknown config variant {part!r}; known: {VARIANTS[1:]}.")
    if part == "dp":
      config.model.predict_next_obs = False
      config.model.num_registers = 0
      config.model.timestep_embed_dim = config.model.timestep_embed_dim // 2
    elif part in PRESETS:
      apply_preset(config, part)
