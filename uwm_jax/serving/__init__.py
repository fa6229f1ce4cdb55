"""Serving a checkpoint to robots and simulators: openpi's websocket protocol (docs/serving.md).

  protocol.py   msgpack with numpy arrays, as openpi-client's msgpack_numpy packs them
  server.py     PolicyServer: asyncio websockets server, batching, world-model modes
  client.py     PolicyClient / RemotePolicy (evaluation rollouts through a server)

The last pipeline stage: it imports the policies layer and evaluation, nothing imports it
except the entry points (`uwm_jax.serve`, `uwm_jax.evaluate --policy_server`,
`uwm_jax.bench.serve`).
"""
