"""A fake `gcloud compute tpus ...` whose TPU VM workers are local processes (tests only).

State lives in FAKE_CLOUD_DIR (written by `tests.fake_cluster.TpuCloud`): config.json (the
slice's worker count, each worker's home folder and machine environment, the states a queued
resource goes through) and state.json (the TPU VMs and queued resources that exist).

  tpu-vm create NAME ...                          a slice of config["workers"] workers
  queued-resources create QR --node-id NAME ...   a request; `describe` walks its states and
                                                  creates the slice at ACTIVE
  tpu-vm describe NAME --format=...networkEndpoints...   one 127.0.0.1 per worker
  tpu-vm scp SRC NAME:DEST --worker=all|W         copies SRC to each worker's home
  tpu-vm ssh NAME --worker=all|W --command CMD    runs `bash -c CMD` as one local process per
      worker, in the worker's home with the worker's environment (its own session, as sshd
      gives it): this command's input is forwarded to each process and its output back; when
      this command ends (even by SIGKILL) the processes' input closes, as when an ssh
      connection closes. The exit status is the worker's (the first non-zero one for all).
  tpu-vm delete NAME / queued-resources delete QR
Every call is appended to FAKE_CLOUD_DIR/calls.log.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

_BOOLEAN_FLAGS = {"--spot", "--quiet", "--force", "--internal-ip", "--async"}


def _parse(argv):
  """(positional words, {flag: value})."""
  words, flags = [], {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--"):
      if "=" in arg:
        key, value = arg.split("=", 1)
      elif arg in _BOOLEAN_FLAGS or i + 1 == len(argv):
        key, value = arg, "true"
      else:
        key, value = arg, argv[i + 1]
        i += 1
      flags[key] = value
    else:
      words.append(arg)
    i += 1
  return words, flags


class Cloud:

  def __init__(self, root):
    self.root = root
    with open(os.path.join(root, "config.json"), encoding="utf-8") as f:
      self.config = json.load(f)
    self.state_path = os.path.join(root, "state.json")
    try:
      with open(self.state_path, encoding="utf-8") as f:
        self.state = json.load(f)
    except FileNotFoundError:
      self.state = {"nodes": {}, "queued": {}}

  def save(self):
    tmp = f"{self.state_path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.state, f)
    os.replace(tmp, self.state_path)  # other calls run at the same time (one ssh per worker)

  def fail(self, message, status=1):
    print(f"ERROR: (gcloud.compute.tpus) {message}", file=sys.stderr)
    sys.exit(status)

  def node(self, name):
    if name not in self.state["nodes"]:
      self.fail(f"NOT_FOUND: TPU VM {name} does not exist")
    return self.state["nodes"][name]

  def create_node(self, name, flags):
    for home in self.config["homes"]:
      os.makedirs(home, exist_ok=True)
    self.state["nodes"][name] = {"accelerator_type": flags.get("--accelerator-type"),
                                 "runtime_version": flags.get("--version",
                                                              flags.get("--runtime-version")),
                                 "spot": flags.get("--spot") == "true"}

  def workers(self, flags):
    selected = flags.get("--worker", "0")
    count = self.config["workers"]
    return list(range(count)) if selected == "all" else [int(selected)]

  # ------------------------------------------------------------------------------ commands
  def tpu_vm(self, verb, words, flags):
    name = words[0] if words else ""
    if verb == "create":
      if name in self.state["nodes"]:
        self.fail(f"ALREADY_EXISTS: TPU VM {name} already exists")
      self.create_node(name, flags)
      print(f"Created tpu [{name}].")
    elif verb == "delete":
      self.node(name)
      del self.state["nodes"][name]
      print(f"Deleted tpu [{name}].")
    elif verb == "describe":
      self.node(name)
      if "networkEndpoints" not in flags.get("--format", ""):
        self.fail("the fake describes networkEndpoints only", 2)
      print(" ".join(["127.0.0.1"] * self.config["workers"]))
    elif verb == "scp":
      source, target = words
      name, dest = target.split(":", 1)
      self.node(name)
      for w in self.workers(flags):
        path = os.path.join(self.config["homes"][w], dest[2:] if dest.startswith("~/") else dest)
        shutil.copy(source, path)
    elif verb == "ssh":
      self.node(name)
      sys.exit(run_on_workers(flags["--command"],
                              [(self.config["homes"][w], self.config["machine_env"][w])
                               for w in self.workers(flags)]))
    else:
      self.fail(f"the fake has no tpu-vm {verb}", 2)

  def queued_resources(self, verb, words, flags):
    name = words[0] if words else ""
    queued = self.state["queued"]
    if verb == "create":
      queued[name] = {"node": flags["--node-id"], "states": list(self.config["queued_states"]),
                      "flags": flags}
      print(f"Create request issued for: [{name}]")
    elif verb == "describe":
      if name not in queued:
        self.fail(f"NOT_FOUND: queued resource {name} does not exist")
      request = queued[name]
      state = request["states"].pop(0) if len(request["states"]) > 1 else request["states"][0]
      if state == "ACTIVE" and request["node"] not in self.state["nodes"]:
        self.create_node(request["node"], request["flags"])
      print(state)
    elif verb == "delete":
      request = queued.pop(name, None) or self.fail(f"NOT_FOUND: {name}")
      self.state["nodes"].pop(request["node"], None)
    else:
      self.fail(f"the fake has no queued-resources {verb}", 2)


def _pump(source, sinks):
  """Copy `source` to every sink until EOF, then close the sinks that are pipes we own."""
  while True:
    try:
      data = os.read(source, 65536)
    except OSError:
      data = b""
    if not data:
      break
    for sink in sinks:
      try:
        sink.write(data)
        sink.flush()
      except (BrokenPipeError, ValueError, OSError):
        pass
  for sink in sinks:
    if sink not in (sys.stdout.buffer, sys.stderr.buffer):
      try:
        sink.close()
      except OSError:
        pass


def run_on_workers(command, workers):
  """`bash -c command` once per (home, environment); returns the exit status ssh would."""
  procs = [subprocess.Popen(["bash", "-c", command], cwd=home, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True) for home, env in workers]
  threading.Thread(target=_pump, args=(sys.stdin.fileno(), [p.stdin for p in procs]),
                   daemon=True).start()
  pumps = []
  for p in procs:
    for stream, sink in ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer)):
      t = threading.Thread(target=_pump, args=(stream.fileno(), [sink]), daemon=True)
      t.start()
      pumps.append(t)
  statuses = [p.wait() for p in procs]
  for t in pumps:
    t.join()
  failed = [s for s in statuses if s != 0]
  status = failed[0] if failed else 0
  return status if status >= 0 else 128 - status  # a signal: as a shell reports it


def main(argv):
  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, lambda s, f: os._exit(128 + s))  # pylint: disable=protected-access
  cloud = Cloud(os.environ["FAKE_CLOUD_DIR"])
  with open(os.path.join(cloud.root, "calls.log"), "a", encoding="utf-8") as f:
    f.write(json.dumps(argv) + "\n")
  words, flags = _parse(argv)
  if words[:2] != ["compute", "tpus"] or len(words) < 4:
    cloud.fail(f"the fake knows `gcloud compute tpus ...` only, not {argv}", 2)
  group, verb, rest = words[2], words[3], words[4:]
  if group == "tpu-vm":
    cloud.tpu_vm(verb, rest, flags)
  elif group == "queued-resources":
    cloud.queued_resources(verb, rest, flags)
  else:
    cloud.fail(f"the fake has no group {group}", 2)
  cloud.save()


if __name__ == "__main__":
  main(sys.argv[1:])
