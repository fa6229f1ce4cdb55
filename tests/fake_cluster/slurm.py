"""A fake SLURM whose nodes are local processes (tests only): sbatch, srun, scontrol, scancel.

State lives in FAKE_SLURM_DIR (config.json written by `tests.fake_cluster.SlurmCluster`: the
CPUs of a node, the machine folder put on tasks' PYTHONPATH); each job has jobs/<id>/.

What it does as SLURM does (the semantics the launch script relies on):
  - `sbatch FILE` reads the #SBATCH lines and starts a controller that runs FILE as the batch
    shell on the job's first node with the job's variables (SLURM_JOB_ID, SLURM_NTASKS,
    SLURM_JOB_NODELIST, SLURM_CPUS_PER_TASK, SLURM_JOB_CPUS_PER_NODE, ...).
  - `sbatch --export=NONE` (or SBATCH_EXPORT=NONE) gives the batch shell only SLURM's
    variables, and its sruns default to --export=NONE (SLURM_EXPORT_ENV).
  - `srun CMD` runs CMD as SLURM_NTASKS tasks, one per node with --ntasks-per-node=1, each with
    SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST, ...; a task may run on --cpus-per-task
    CPUs (or SRUN_CPUS_PER_TASK), else on ONE: since Slurm 22.05 srun does not read
    SLURM_CPUS_PER_TASK (sbatch's). --kill-on-bad-exit kills the other tasks (SIGKILL) when one
    exits non-zero; else --wait=S kills them S s after the first task ended. --export=ALL (the
    default) passes the environment. srun forwards the signals it gets to its tasks and exits
    with the highest exit status of its tasks (a signal counted as 128 + its number).
  - A requeue (`scontrol requeue`, a preemption, a node failure of a --requeue job) ends every
    process of the job (SIGTERM, SIGKILL after KILL_WAIT_S) and runs the batch shell again on
    other nodes with SLURM_RESTART_COUNT one higher.
  - `scancel --signal=SIG JOB` signals the job's steps (tasks), not the batch shell;
    `scancel JOB` cancels it (no requeue).
  - Test controls (`request(job, what)`): "time_limit" sends SIGUSR1 to the batch shell only
    (what --signal=B:USR1@N does before the time limit); "preempt" sends SIGTERM to the batch
    shell and srun (which forwards it to the tasks), SIGKILL after KILL_WAIT_S, then requeues
    (PreemptMode=REQUEUE);
    "node_failure" kills every process at once (SIGKILL) and requeues.

Nodes: incarnation r of a job runs on nodes named node-<2r>, node-<2r+1>, ... (each process
sees its node's name as its host name, through FAKE_HOSTNAME); their addresses are loopback
addresses 127.0.0.<k+1> (SLURM_JOB_NODELIST), so jax's coordinator (on the first node) is on
127.0.0.1. Every node has all of this machine's CPUs.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

KILL_WAIT_S = 30.0


def _root():
  return os.environ["FAKE_SLURM_DIR"]


def _job_dir(job_id, root=None):
  return os.path.join(root or _root(), "jobs", str(job_id))


def _config():
  with open(os.path.join(_root(), "config.json"), encoding="utf-8") as f:
    return json.load(f)


def _read(path, default=None):
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip()
  except FileNotFoundError:
    return default


def _write(path, text):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def _log(job_id, line):
  with open(os.path.join(_job_dir(job_id), "events.log"), "a", encoding="utf-8") as f:
    f.write(f"{time.time():.3f} {line}\n")


def _signal_pids(pids, sig):
  for pid in pids:
    try:
      os.kill(pid, sig)
    except ProcessLookupError:
      pass


def alive(pid) -> bool:
  """Whether PID runs (a zombie has ended: only its parent has not reaped it)."""
  if not pid:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:  # a zombie child of srun counts as ended
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().split(") ", 1)[1][0] != "Z"
  except (FileNotFoundError, IndexError):
    return False


def task_pids(job_id, root=None):
  """The PIDs of the job's running step tasks."""
  pids = []
  steps = os.path.join(_job_dir(job_id, root), "steps")
  for name in os.listdir(steps) if os.path.isdir(steps) else []:
    pids += [int(p) for p in _read(os.path.join(steps, name), "").split()]
  return [p for p in pids if alive(p)]


def request(job_id, what, root=None):
  """A control for the job's controller: time_limit, preempt, node_failure (tests), requeue
  (scontrol), cancel (scancel), kill (tests: SIGKILL everything, no requeue)."""
  _write(os.path.join(_job_dir(job_id, root), f"request.{what}"), what)


# -------------------------------------------------------------------------------------- sbatch
def _sbatch_options(path):
  options = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
      if match:
        options[match.group(1)] = match.group(2) or "true"
  return options


def _free_job_id():
  """A job id whose jax coordinator port (SLURM_JOB_ID % 4096 + 61440) is free here."""
  for _ in range(200):
    job_id = random.randrange(10000, 10000000)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", job_id % 4096 + 61440))
      except OSError:
        continue
    if not os.path.exists(_job_dir(job_id)):
      return job_id
  raise RuntimeError("no free job id")


def sbatch(argv):
  (path,) = argv
  options = _sbatch_options(path)
  job_id = _free_job_id()
  os.makedirs(os.path.join(_job_dir(job_id), "steps"))
  _write(os.path.join(_job_dir(job_id), "submit.json"),
         json.dumps({"script": os.path.abspath(path), "options": options, "cwd": os.getcwd(),
                     "env": dict(os.environ)}))
  subprocess.Popen([sys.executable, os.path.abspath(__file__), "_controller", str(job_id)],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=open(os.path.join(_job_dir(job_id), "controller.err"), "w"),
                   start_new_session=True)
  print(f"Submitted batch job {job_id}")


def _batch_env(job_id, submit, restart):
  options, config = submit["options"], _config()
  nodes = int(options.get("nodes", 1))
  per_node = int(options.get("ntasks-per-node", 1))
  cpus = config["cpus_per_node"]
  cpus_per_task = int(options.get("cpus-per-task", 1))
  names = [f"node-{restart * nodes + k}" for k in range(nodes)]
  export = options.get("export", submit["env"].get("SBATCH_EXPORT", "ALL"))
  if export == "ALL":
    env = dict(submit["env"])
  else:  # NONE: the job sees only SLURM's variables (and the cluster's tools on PATH)
    env = {k: v for k, v in submit["env"].items() if k.startswith(("SLURM_", "FAKE_"))}
    env.update(HOME=submit["env"].get("HOME", "/"), SLURM_EXPORT_ENV="NONE",
               PATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)) + "/bin",
                                     "/usr/bin", "/bin"]))
  env.update({
      "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id),
      "SLURM_JOB_NAME": options.get("job-name", "job"),
      "SLURM_JOB_NODELIST": ",".join(f"127.0.0.{k + 1}" for k in range(nodes)),
      "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
      "SLURM_NTASKS": str(nodes * per_node), "SLURM_NTASKS_PER_NODE": str(per_node),
      "SLURM_CPUS_ON_NODE": str(min(cpus, cpus_per_task * per_node)),
      "SLURM_JOB_CPUS_PER_NODE": f"{cpus_per_task * per_node}(x{nodes})",
      "SLURM_GPUS_ON_NODE": options.get("gpus-per-node", "0"),
      "SLURM_SUBMIT_DIR": submit["cwd"], "FAKE_SLURM_NODES": ",".join(names),
      "FAKE_HOSTNAME": names[0], "SLURMD_NODENAME": names[0]})
  if "cpus-per-task" in options:
    env["SLURM_CPUS_PER_TASK"] = options["cpus-per-task"]
  if restart:
    env["SLURM_RESTART_COUNT"] = str(restart)
  else:
    env.pop("SLURM_RESTART_COUNT", None)
  return env


def _signal_batch(batch, sig):
  """The batch shell and what it started (srun; an srun forwards it to its tasks)."""
  try:
    os.killpg(batch.pid, sig)
  except ProcessLookupError:
    pass


def _end_job(job_id, batch, sig_first):
  """End every process of the job: sig_first (SIGTERM: the batch shell, and through srun the
  tasks), SIGKILL to whatever is left after KILL_WAIT_S."""
  _signal_batch(batch, sig_first)
  if sig_first == signal.SIGKILL:
    _signal_pids(task_pids(job_id), signal.SIGKILL)
  deadline = time.time() + KILL_WAIT_S
  while time.time() < deadline and (batch.poll() is None or task_pids(job_id)):
    time.sleep(0.1)
  _signal_batch(batch, signal.SIGKILL)
  _signal_pids(task_pids(job_id), signal.SIGKILL)
  batch.wait()
  while task_pids(job_id):
    time.sleep(0.05)


def _controller(argv):
  (job_id,) = argv
  jdir = _job_dir(job_id)
  with open(os.path.join(jdir, "submit.json"), encoding="utf-8") as f:
    submit = json.load(f)
  output = submit["options"].get("output", "slurm-%j.out").replace("%j", job_id)
  restart = 0
  while True:
    env = _batch_env(job_id, submit, restart)
    for name in os.listdir(jdir):
      if name.startswith("request.") or name == "steps":
        path = os.path.join(jdir, name)
        if name == "steps":
          for step in os.listdir(path):
            os.remove(os.path.join(path, step))
        else:
          os.remove(path)
    with open(output, "a", encoding="utf-8") as out:
      batch = subprocess.Popen(["bash", submit["script"]], cwd=submit["cwd"], env=env,
                               stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                               start_new_session=True)
    _write(os.path.join(jdir, "batch.pid"), str(batch.pid))
    _write(os.path.join(jdir, "state"), f"RUNNING {restart}")
    _log(job_id, f"start restart={restart} nodes={env['FAKE_SLURM_NODES']}")
    requeue = False
    while batch.poll() is None:
      time.sleep(0.1)
      for what in ("time_limit", "preempt", "node_failure", "requeue", "cancel", "kill"):
        path = os.path.join(jdir, f"request.{what}")
        if not os.path.exists(path):
          continue
        os.remove(path)
        _log(job_id, what)
        if what == "time_limit":
          batch.send_signal(signal.SIGUSR1)
        elif what in ("cancel", "kill"):
          _end_job(job_id, batch, signal.SIGTERM if what == "cancel" else signal.SIGKILL)
          _write(os.path.join(jdir, "state"), f"CANCELLED {restart}")
          return
        else:
          requeue = True
          _end_job(job_id, batch, signal.SIGKILL if what == "node_failure" else signal.SIGTERM)
    status = batch.returncode
    if requeue or os.path.exists(os.path.join(jdir, "request.requeue")):
      _log(job_id, f"requeued after restart={restart} (batch exit status {status})")
      restart += 1
      continue
    _log(job_id, f"ended status={status}")
    _write(os.path.join(jdir, "state"),
           f"{'COMPLETED' if status == 0 else 'FAILED'} {restart} {status}")
    return


# ---------------------------------------------------------------------------------------- srun
_SRUN_VALUE_OPTIONS = {"--cpus-per-task", "-c", "--export", "--ntasks", "-n", "--kill-on-bad-exit",
                       "-K", "--wait", "-W"}


def _srun_options(argv):
  options, i = {}, 0
  while i < len(argv) and argv[i].startswith("-"):
    arg = argv[i]
    key, value = (arg.split("=", 1) + [None])[:2]
    if key not in _SRUN_VALUE_OPTIONS:
      raise SystemExit(f"srun (fake): unknown option {arg}")
    if value is None and key in ("--cpus-per-task", "-c", "--export", "--ntasks", "-n",
                                 "--wait", "-W"):
      i += 1
      value = argv[i]
    options[key.lstrip("-")] = "1" if value is None else value
    i += 1
  return options, argv[i:]


def srun(argv):
  options, command = _srun_options(argv)
  job_id = os.environ["SLURM_JOB_ID"]
  ntasks = int(options.get("ntasks", options.get("n", os.environ["SLURM_NTASKS"])))
  per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
  cpus_arg = options.get("cpus-per-task", options.get("c", os.environ.get("SRUN_CPUS_PER_TASK")))
  cpus = int(cpus_arg or 1)
  names = os.environ["FAKE_SLURM_NODES"].split(",")
  nodelist = os.environ["SLURM_JOB_NODELIST"]
  if options.get("export", os.environ.get("SLURM_EXPORT_ENV", "ALL")) == "ALL":
    base = dict(os.environ)
  else:  # NONE: what slurmd gives a task of its own
    base = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "FAKE_"))}
    base["PATH"] = "/usr/bin:/bin"
  machine = _config()["machine_dir"]
  step_id = len(os.listdir(os.path.join(_job_dir(job_id), "steps")))
  all_cpus = sorted(os.sched_getaffinity(0))
  procs = []
  for task in range(ntasks):
    node = task // per_node
    env = dict(base)
    env.update({
        "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task % per_node),
        "SLURM_NODEID": str(node), "SLURM_STEP_ID": str(step_id), "SLURM_STEPID": str(step_id),
        "SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_NUM_NODES": str(len(names)),
        "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_NTASKS": str(ntasks),
        "SLURMD_NODENAME": names[node], "FAKE_HOSTNAME": names[node],
        "FAKE_PROCESS_INDEX": str(task),
        "PYTHONPATH": os.pathsep.join([machine] + [p for p in [base.get("PYTHONPATH")] if p])})
    env.pop("SLURM_CPUS_PER_TASK", None)
    if cpus_arg:
      env["SLURM_CPUS_PER_TASK"] = str(cpus)
    task_cpus = all_cpus[:max(1, min(cpus, len(all_cpus)))]
    procs.append(subprocess.Popen(command, env=env, start_new_session=True,
                                  preexec_fn=lambda c=task_cpus: os.sched_setaffinity(0, c)))
  _write(os.path.join(_job_dir(job_id), "steps", str(step_id)),
         " ".join(str(p.pid) for p in procs))

  def forward(sig, _):
    print(f"srun: forwarding signal {sig} to the step's tasks", file=sys.stderr, flush=True)
    _signal_pids([p.pid for p in procs if p.poll() is None], sig)

  for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, forward)
  kill_on_bad_exit = options.get("kill-on-bad-exit", options.get("K", "0")) != "0"
  wait_s = float(options.get("wait", options.get("W", 0))) or None
  statuses, first_end = {}, None
  while len(statuses) < len(procs):
    for task, p in enumerate(procs):
      if task not in statuses and p.poll() is not None:
        statuses[task] = p.returncode
        first_end = first_end or time.time()
        if p.returncode != 0:
          print(f"srun: error: task {task}: Exited with exit code {p.returncode}", file=sys.stderr)
          if kill_on_bad_exit:
            _signal_pids([q.pid for q in procs if q.poll() is None], signal.SIGKILL)
    if wait_s and first_end and time.time() - first_end > wait_s:
      print(f"srun: error: tasks still running {wait_s:.0f} s after the first ended: killing "
            "them", file=sys.stderr)
      _signal_pids([q.pid for q in procs if q.poll() is None], signal.SIGKILL)
      wait_s = None
    time.sleep(0.05)
  # The highest exit code, a signal counted as 128 + its number.
  sys.exit(max(s if s >= 0 else 128 - s for s in statuses.values()))


# ------------------------------------------------------------------------------ scontrol/scancel
def scontrol(argv):
  if argv[:1] == ["requeue"]:
    job_id = argv[1]
    request(job_id, "requeue")
    return
  raise SystemExit(f"scontrol (fake): unsupported {argv}")


def scancel(argv):
  sig = None
  args = []
  for arg in argv:
    if arg.startswith("--signal="):
      sig = arg.split("=", 1)[1]
    else:
      args.append(arg)
  (job_id,) = args
  if sig is None:
    request(job_id, "cancel")
    return
  _signal_pids(task_pids(job_id), getattr(signal, f"SIG{sig}"))


def main(argv):
  tool, rest = os.path.basename(argv[0]), argv[1:]
  if tool == "slurm.py":
    tool, rest = rest[0], rest[1:]
  {"sbatch": sbatch, "srun": srun, "scontrol": scontrol, "scancel": scancel,
   "_controller": _controller}[tool](rest)


if __name__ == "__main__":
  main(sys.argv)
