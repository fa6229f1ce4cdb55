"""Serving a checkpoint to robots and simulators: openpi's websocket protocol (docs/serving.md).

  protocol.py         msgpack with numpy arrays, as openpi-client's msgpack_numpy packs them
  server.py           PolicyServer: the asyncio websockets transport and the request batcher
  from_checkpoint.py  make_server: a PolicyServer for a checkpoint, loaded as the evaluator
                      loads it (`uwm_jax.policies.inference_checkpoint`)
  server_thread.py    ServerThread: a PolicyServer in a background thread of this process
  client.py           PolicyClient / RemotePolicy (evaluation rollouts through a server)

The last pipeline stage, beside evaluation: it imports the policies layer and nothing of
evaluation (scripts/import_graph.py checks it); nothing imports it except the entry points
(`uwm_jax.serve`, `uwm_jax.evaluate --policy_server`, `benchmarks.serve`).
"""
