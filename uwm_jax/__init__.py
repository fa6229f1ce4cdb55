"""uwm_jax: Unified World Models in JAX/Flax (README.md).

Importing the package first decides which platforms jax tries on this host
(`uwm_jax.host_platform`: only the CPU where no accelerator device is present, so no TPU probe
lines), before any of its modules imports jax; a user's own JAX_PLATFORMS always wins.
"""

from uwm_jax import host_platform

host_platform.configure()
