"""Run by tests/test_serving_openpi_client.py with the robot-side venv's python
(.venv-robot-client: openpi-client 0.1.2, numpy < 2): drives our server with the UNMODIFIED
`openpi_client.websocket_client_policy.WebsocketClientPolicy` and prints one JSON line.

  python tests/openpi_client_script.py SCENARIO PORT [API_KEY]

Observations are those of the embedded tabletop task (two 32x32 cameras + pusher_pos), drawn
from a seeded generator. Every loop is bounded; the whole script exits within its timeout.
"""

import json
import sys
import threading

import numpy as np
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy


def observation(seed, size=32):
  rng = np.random.default_rng(seed)
  return {"front_rgb": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
          "top_rgb": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
          "pusher_pos": rng.uniform(-0.2, 0.2, 2).astype(np.float32)}


def listed(x):
  return np.asarray(x).tolist()


def basic(port, key):
  policy = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
  meta = policy.get_server_metadata()
  replies = [policy.infer(dict(observation(i), reset=(i == 0), seed=7)) for i in range(3)]
  return {"metadata": {k: (listed(v) if isinstance(v, np.ndarray) else v)
                       for k, v in meta.items()},
          "actions": [listed(r["actions"]) for r in replies],
          "dtype": str(replies[0]["actions"].dtype),
          "timing": [sorted(r["server_timing"]) + sorted(r["policy_timing"]) for r in replies]}


def two_clients(port, key):
  """Two clients at once, each with its own history: client A repeats one observation,
  client B sends different ones; then a fresh client replays A's sequence alone."""
  out = {}

  def run(name, seeds, stream_seed):
    policy = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
    out[name] = [listed(policy.infer(dict(observation(s), reset=(i == 0), seed=stream_seed))
                        ["actions"]) for i, s in enumerate(seeds)]

  threads = [threading.Thread(target=run, args=("a", [1, 1, 1, 1], 11)),
             threading.Thread(target=run, args=("b", [2, 3, 4, 5], 12))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(120)
  run("a_alone", [1, 1, 1, 1], 11)
  return out


def bad_inputs(port, key):
  """Each bad request gets an error (RuntimeError from the client) while a second client keeps
  getting actions between them."""
  import websockets.sync.client  # what the openpi client itself uses
  good = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
  bad = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
  ok = observation(0)
  cases = {
      "missing_key": {k: v for k, v in ok.items() if k != "top_rgb"},
      "wrong_shape": dict(ok, front_rgb=np.zeros((32, 32), np.uint8)),
      "wrong_dtype": dict(ok, front_rgb=np.zeros((32, 32, 3), np.float32)),
      "nan_state": dict(ok, pusher_pos=np.array([np.nan, 0.0], np.float32)),
      "unknown_mode": dict(ok, mode="teleport"),
      "oversized": dict(ok, padding=np.zeros(3 * 2**20, np.uint8)),
  }
  out = {}
  for name, obs in cases.items():
    try:
      bad.infer(obs)
      out[name] = "no error"
    except RuntimeError as e:
      out[name] = str(e)
    out[name + "/other_client_ok"] = len(good.infer(ok)["actions"]) > 0
  # A frame that is not msgpack, sent raw on the same connection.
  bad._ws.send(b"\xc1 not msgpack")
  reply = bad._ws.recv(timeout=60)
  out["malformed"] = reply if isinstance(reply, str) else "binary reply"
  out["malformed/other_client_ok"] = len(good.infer(ok)["actions"]) > 0
  # The bad client still works after its errors.
  out["bad_client_recovers"] = len(bad.infer(ok)["actions"]) > 0
  # A client that disconnects with a request in flight.
  headers = {"Authorization": f"Api-Key {key}"} if key else None
  with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", compression=None,
                                      max_size=None, additional_headers=headers) as conn:
    conn.recv(timeout=60)
    conn.send(msgpack_numpy.packb(ok))
  out["after_disconnect/other_client_ok"] = len(good.infer(ok)["actions"]) > 0
  return out


def api_key(port, key):
  out = {}
  try:
    WebsocketClientPolicy("127.0.0.1", port, api_key="wrong-key")
    out["wrong"] = "connected"
  except Exception as e:  # pylint: disable=broad-except
    out["wrong"] = f"{type(e).__name__}: {e}"
  try:
    WebsocketClientPolicy("127.0.0.1", port)
    out["none"] = "connected"
  except Exception as e:  # pylint: disable=broad-except
    out["none"] = f"{type(e).__name__}: {e}"
  policy = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
  out["right"] = listed(policy.infer(observation(0))["actions"])
  return out


def world_model(port, key):
  policy = WebsocketClientPolicy("127.0.0.1", port, api_key=key)
  meta = policy.get_server_metadata()
  H = meta["model_action_horizon"]
  fd = policy.infer(dict(observation(0), mode="forward_dynamics",
                         actions=np.zeros((H, meta["action_dim"]), np.float32)))
  vp = policy.infer(dict(observation(0), mode="video_prediction"))
  inv = policy.infer(dict(observation(0), mode="inverse_dynamics",
                          goal={"front_rgb": observation(1)["front_rgb"],
                                "top_rgb": observation(1)["top_rgb"]}))
  return {"fd_shape": list(fd["frames"].shape), "fd_dtype": str(fd["frames"].dtype),
          "vp_shape": list(vp["frames"].shape), "inv_shape": list(inv["actions"].shape)}


def codec(port, key):
  """Our server decodes what this msgpack_numpy packs and vice versa: echo of dtypes/shapes
  through the metadata (server -> client) and a request with every common dtype."""
  del port, key
  sample = {"u8": np.arange(6, dtype=np.uint8).reshape(2, 3), "f4": np.float32(1.5),
            "f8": np.linspace(0, 1, 4), "i8": np.array([[-1, 2]], np.int64), "s": "text",
            "nested": {"b": True, "l": [1, 2.5]}}
  return {"packed_hex": msgpack_numpy.packb(sample).hex()}


if __name__ == "__main__":
  scenario, port = sys.argv[1], int(sys.argv[2])
  key = sys.argv[3] if len(sys.argv) > 3 else None
  print(json.dumps(globals()[scenario](port, key)), flush=True)
