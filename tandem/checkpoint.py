"""Orbax checkpoints: periodic asynchronous saves, resume, and params-only restore.

Layout: `workdir/checkpoints/<step>/{model,train_state,data,checksums}` plus
`workdir/config.json`.
- `model`: params and model state (batch-norm statistics): everything inference
  needs, restorable alone, on any devices, for analysis.
- `train_state`: optimizer state, step, rng, and the first step whose loss was not
  finite (-1 if none).
- `data`: the input iterator's state (JSON), so resume continues the same stream.
- `checksums`: a checksum of every saved array (JSON; `array_checksums`), computed
  on device from the arrays being saved and checked against the arrays read back
  on every restore, so a damaged file (a flipped bit the compressor does not
  notice) is an error naming the array, never wrong weights.

Orbax writes each step into a temporary directory and renames it only once every
item is complete, so a half-written checkpoint (process killed mid-save) is never
listed by `latest_step()` and never picked up on resume.

A complete checkpoint damaged afterwards (a truncated or deleted file, garbage
metadata, a checksum that does not match) is refused, on resume and by
`tandem.load`, with a `CheckpointError` naming the step, the array where it can
be told, and the newest earlier step that reads back intact. Resume does not fall
back to that step by itself: moving the damaged step aside is the user's call.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

class CheckpointError(RuntimeError):
  """A checkpoint is missing, incomplete or unreadable."""


_ARRAY_HANDLER_SET = False


def _write_replicated_arrays_whole() -> None:
  """In a single process, saves each array from one replica, in one piece.

  Orbax's default ("replica-parallel") splits every replicated array into a slice
  per replica so that hosts share the writing. Within one process that only adds a
  device-side slice per replica and array (on 8 CPU devices a runlocal ResNet-18
  save took ~6.5 s instead of well under 1 s). Multi-process runs keep the default.
  Restoring is unaffected.
  """
  global _ARRAY_HANDLER_SET
  if _ARRAY_HANDLER_SET or jax.process_count() > 1:
    return
  try:  # The metadata store has no public path; keep it as orbax's default has it.
    from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()),
      override=True)
  _ARRAY_HANDLER_SET = True


def _handlers():
  return {"model": ocp.StandardCheckpointHandler(),
          "train_state": ocp.StandardCheckpointHandler(),
          "data": ocp.JsonCheckpointHandler(),
          "checksums": ocp.JsonCheckpointHandler()}


def _words(x):
  """The array's bits as uint32 words (narrower types widened, 64-bit ones split)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}
  return jax.lax.bitcast_convert_type(x, unsigned[x.dtype.itemsize]).astype(
      jnp.uint32)


@jax.jit
def _checksum_words(tree):
  def one(x):
    w = _words(x)
    # Each word's flat position, from iotas (no reshape of a sharded array).
    position = jnp.ones((), jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
      position = position + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) \
          * jnp.uint32(stride % 2**32)
      stride *= w.shape[axis]
    return jnp.stack([jnp.sum(w, dtype=jnp.uint32),
                      jnp.sum(w * position, dtype=jnp.uint32)])
  return jax.tree.map(one, tree)


def array_checksums(tree) -> dict[str, str]:
  """{array path: 16 hex digits}: a Fletcher-style checksum of each array's bits
  (the wrapping sums of its uint32 words and of each word times its position),
  computed on the devices that hold it, sharded or not. Any one changed word
  changes both sums; equal arrays give equal checksums on any sharding."""
  sums = jax.device_get(_checksum_words(tree))
  return {jax.tree_util.keystr(path): f"{int(a):08x}{int(b):08x}"
          for path, (a, b) in jax.tree_util.tree_flatten_with_path(sums)[0]}


def _verify(item: str, tree, saved: dict[str, str] | None) -> None:
  """CheckpointError naming the first arrays whose checksum differs."""
  if saved is None:  # Written before checksums were stored.
    return
  found = array_checksums(tree)
  bad = [k for k in saved if found.get(k) != saved[k]]
  if bad:
    raise CheckpointError(
        f"{len(bad)} array(s) of {item!r} read back with a checksum other than "
        f"the one saved: {', '.join(bad[:3])}")


def _root_cause(e: BaseException) -> str:
  """What went wrong in one line: the first error in the chain that names an
  array (TensorStore's own message, without the 60 lines of its spec), else the
  error orbax raised."""
  chain = [e]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None \
      and len(chain) < 20:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  for error in chain:
    text = str(error).strip()
    array = re.search(r'Error (?:reading|opening) "([^"/]+)/', text)
    if array:
      return (f"array {array.group(1)}: {type(error).__name__}: "
              f"{text.splitlines()[0][:300]}")
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _restore_quietly(restore):
  """`restore()`, or a CheckpointError naming the cause in one line.

  When a damaged checkpoint fails to read, orbax's other concurrent reads that
  failed too are reported by Python as "Exception ignored in <coroutine>", each
  with a 60-line TensorStore spec, whenever they are garbage-collected: they are
  collected here, at debug level, after the error was reduced to its message and
  dropped (so nothing keeps them alive to be printed later)."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda u: logging.debug("Ignored: %s", u.exc_value)
  cause = None
  try:
    try:
      return restore()
    except Exception as e:  # Orbax raises many types; name the cause.
      cause = _root_cause(e)
  finally:
    gc.collect()
    sys.unraisablehook = previous
  raise CheckpointError(cause)


def _step_has(directory: str, step: int, item: str) -> bool:
  return os.path.isdir(os.path.join(directory, str(step), item))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


@contextlib.contextmanager
def _quiet():
  """Orbax's warnings about options a read-only manager ignores, silenced: a
  notebook that loads checkpoints should print nothing."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


# Writes that fail because of the storage, not the program: errno, and the
# status codes TensorStore reports them with.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
_STORAGE_CODES = (("RESOURCE_EXHAUSTED", os.strerror(errno.ENOSPC)),
                  ("No space left on device", os.strerror(errno.ENOSPC)),
                  ("Read-only file system", os.strerror(errno.EROFS)),
                  ("PERMISSION_DENIED", os.strerror(errno.EACCES)))


def storage_error(e: BaseException) -> str | None:
  """The system's reason ("No space left on device", "Read-only file system",
  ...) when `e` or an error it was raised from is a write the storage refused;
  None for any other error."""
  seen = 0
  while e is not None and seen < 20:
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
      return os.strerror(e.errno)
    for code, reason in _STORAGE_CODES:
      if code in str(e):
        return reason
    e, seen = e.__cause__ or e.__context__, seen + 1
  return None


def _filesystem(path: str) -> str:
  """"the filesystem at MOUNT: X MB free of Y MB" for the volume holding `path`."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  mount = path
  while not os.path.ismount(mount):
    mount = os.path.dirname(mount)
  try:
    st = os.statvfs(path)
  except OSError:
    return f"the filesystem at {mount}"
  mb = lambda blocks: blocks * st.f_frsize / 2**20
  return (f"the filesystem at {mount}: {mb(st.f_bavail):.1f} MB free of "
          f"{mb(st.f_blocks):.1f} MB")


def storage_message(workdir: str, reason: str, what: str, path: str = "") -> str:
  """The sentence for a write the storage refused: what failed, why, on which
  volume (the one holding `path`, default the workdir), the checkpoint the run
  can resume from, and what to do."""
  try:
    steps = all_steps(workdir)
  except Exception:  # pylint: disable=broad-except
    steps = []
  last = (f"The last complete checkpoint is step {steps[-1]}, intact; no partial "
          "checkpoint is ever resumed from." if steps else
          "No checkpoint was completed.")
  fix = {os.strerror(errno.ENOSPC): "Free space (or raise the quota)",
         os.strerror(errno.EDQUOT): "Free space (or raise the quota)",
         os.strerror(errno.EROFS): "Make the volume writable again"}.get(
             reason, "Fix the permissions")
  return (f"{what}: {reason} ({_filesystem(path or workdir)}). {last} {fix}, or pass "
          "another --workdir with this one's files, then run the same command to "
          + ("resume." if steps else "start again."))


class _QuietStorageErrors(logging.Filter):
  """Drops orbax's own ERROR logs of a write the storage refused (one traceback
  per writer thread and unretrieved future, hundreds of lines): the run stops
  with one WorkdirError that says it all. Other errors pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    message = record.getMessage()
    if "orbax" not in record.pathname and "orbax" not in message:
      return True
    error = record.exc_info[1] if record.exc_info else None
    return (storage_error(error) if error is not None else None) is None and \
        not any(code in message for code, _ in _STORAGE_CODES)


_STORAGE_FILTER = _QuietStorageErrors()


class Checkpointer:
  """Saves and restores the full training state of one run.

  Keeps the last `keep` checkpoints, and with `keep_every` > 0 also every
  checkpoint whose step is a multiple of it (a trajectory to analyse).
  """

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True,
               keep_every: int = 0):
    _write_replicated_arrays_whole()
    for logger in ("absl", "asyncio"):  # Added once: filters are a set.
      logging.getLogger(logger).addFilter(_STORAGE_FILTER)
    self.workdir = workdir
    self._pending = None  # The last step saved, until known complete.
    self.manager = ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every or None, create=True,
            enable_async_checkpointing=async_save),
        item_handlers=_handlers())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params, state, data_state: dict[str, Any]) -> None:
    """Saves params and the train state (a dict holding `model_state`)."""
    model, train_state = _split(params, state)
    checksums = {"model": array_checksums(model),
                 "train_state": array_checksums(train_state)}
    # An asynchronous save that failed reports it here, at the next one.
    with self._storage_errors(step):
      self.manager.save(step, args=ocp.args.Composite(
          model=ocp.args.StandardSave(model),
          train_state=ocp.args.StandardSave(train_state),
          data=ocp.args.JsonSave(data_state),
          checksums=ocp.args.JsonSave(checksums)), force=True)
    self._pending = step

  @contextlib.contextmanager
  def _storage_errors(self, step: int | None):
    """A save the storage refused (full, read-only, not permitted) as a
    WorkdirError naming the step, the volume and the checkpoint to resume from."""
    try:
      yield
    except Exception as e:  # Orbax raises many types, from several threads.
      reason = storage_error(e)
      if reason is None:
        raise
      # (Orbax's manager may raise the same error again if asked: the disk.)
      failed = step if self._pending is None or os.path.isdir(os.path.join(
          str(self.manager.directory), str(self._pending))) else self._pending
      raise WorkdirError(storage_message(
          self.workdir, reason, f"Could not write checkpoint step {failed} in "
          f"{self.manager.directory}", path=str(self.manager.directory))) from e

  def restore(self, step: int, abstract_params, abstract_state):
    """Restores (params, state, data_state) onto the shardings of the abstract
    trees, each array checked against its saved checksum. A damaged step raises a
    CheckpointError naming it and the newest earlier step that is intact."""
    model, train_state = _split(abstract_params, abstract_state)
    try:
      return self._restore_verified(step, model, train_state)
    except CheckpointError as e:
      raise CheckpointError(_damaged_message(
          str(self.manager.directory), step, str(e), self._intact_before(
              step, model, train_state), resume=True)) from e

  def _restore_verified(self, step, model, train_state):
    directory = str(self.manager.directory)
    with_checksums = _step_has(directory, step, "checksums")
    items = dict(model=ocp.args.StandardRestore(model),
                 train_state=ocp.args.StandardRestore(train_state),
                 data=ocp.args.JsonRestore())
    if with_checksums:
      items["checksums"] = ocp.args.JsonRestore()
    restored = _restore_quietly(lambda: self.manager.restore(
        step, args=ocp.args.Composite(**items)))
    checksums = restored["checksums"] if with_checksums else {}
    _verify("model", restored["model"], checksums.get("model"))
    _verify("train_state", restored["train_state"], checksums.get("train_state"))
    model, state = restored["model"], dict(restored["train_state"])
    state["model_state"] = model["model_state"]
    return model["params"], state, restored["data"]

  def _intact_before(self, step, model, train_state) -> int | None:
    for earlier in sorted((s for s in self.manager.all_steps() if s < step),
                          reverse=True):
      try:
        self._restore_verified(earlier, model, train_state)
        return earlier
      except CheckpointError:
        continue
    return None

  def wait(self) -> None:
    with self._storage_errors(None):
      self.manager.wait_until_finished()

  def close(self) -> None:
    with self._storage_errors(None):
      try:
        self.manager.wait_until_finished()
      finally:
        self.manager.close()


def _split(params, state):
  model = {"params": params, "model_state": state["model_state"]}
  train_state = {k: v for k, v in state.items() if k != "model_state"}
  return model, train_state


def _damaged_message(directory: str, step: int, cause: str, intact: int | None,
                     resume: bool) -> str:
  workdir = os.path.dirname(directory)
  aside = (f"mv {os.path.join(directory, str(step))} "
           f"{os.path.join(workdir, f'damaged_step_{step}')}")
  if intact is None:
    todo = ("No earlier checkpoint reads back intact: start again in a new "
            "--workdir." if resume else "No earlier checkpoint reads back intact.")
  elif resume:
    todo = (f"Step {intact} is intact: move the damaged step aside ({aside}) and "
            f"run the same command to resume from step {intact}.")
  else:
    todo = (f"Step {intact} is intact: load it with step={intact}, or move the "
            f"damaged step aside ({aside}).")
  return (f"Checkpoint step {step} in {directory} is damaged or unreadable: "
          f"{cause}. {todo}")


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"No checkpoints in {workdir!r} (expected {directory}).")
  with _quiet():
    return ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers=_handlers())


def all_steps(workdir: str) -> list[int]:
  """The steps of the workdir's complete checkpoints, ascending."""
  return sorted(_read_only_manager(workdir).all_steps())


def restore_params(workdir: str, step: int | None = None,
                   sharding: jax.sharding.Sharding | None = None):
  """Restores the params and model state of `step` (default: latest), no optimizer.

  Placed on `sharding` (default: the first local device; a NamedSharding places
  every array on that mesh, replicated), whatever topology the checkpoint was
  saved on. Returns (params, model_state, step).
  """
  manager = _read_only_manager(workdir)
  directory = checkpoint_dir(workdir)
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f"No complete checkpoint in {directory}.")
  step = max(steps) if step is None else step
  if step not in steps:
    raise CheckpointError(f"No checkpoint for step {step} in {directory}; "
                          f"available steps: {sorted(steps)}.")
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    model = _restore_model_verified(manager, directory, step, sharding)
  except CheckpointError as e:
    intact = None
    for earlier in sorted((s for s in steps if s < step), reverse=True):
      try:
        _restore_model_verified(manager, directory, earlier, sharding)
        intact = earlier
        break
      except CheckpointError:
        continue
    raise CheckpointError(_damaged_message(directory, step, str(e), intact,
                                           resume=False)) from e
  return model["params"], model.get("model_state") or {}, step


def _restore_model_verified(manager, directory: str, step: int, sharding):
  """The `model` item of `step` on `sharding`, checked against its checksums."""
  with_checksums = _step_has(directory, step, "checksums")

  def restore():
    with _quiet():
      metadata = manager.item_metadata(step)["model"].tree
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
          metadata)
      items = dict(model=ocp.args.StandardRestore(abstract))
      if with_checksums:
        items["checksums"] = ocp.args.JsonRestore()
      return manager.restore(step, args=ocp.args.Composite(**items))

  restored = _restore_quietly(restore)
  if with_checksums:
    _verify("model", restored["model"], restored["checksums"].get("model"))
  return restored["model"]


class WorkdirError(RuntimeError):
  """The workdir cannot be written: read-only, not permitted, or full."""


def check_writable(workdir: str) -> None:
  """Creates `workdir` and writes (then removes) a probe file in it, or raises
  WorkdirError saying why it cannot, before a run computes anything to lose."""
  try:
    os.makedirs(workdir, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".tandem_write_test_", dir=workdir)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
        f"Cannot write to the workdir {workdir}: {e.strerror or e} "
        f"({type(e).__name__}). Make it writable (a read-only mount? permissions? "
        "a full disk?) or pass another --workdir.") from e


class WorkdirLock:
  """One run per workdir: an exclusive `flock` on WORKDIR/.lock.process<i>.

  Each process of a run locks its own index, so a second run on the same workdir
  is refused by its process 0 before it writes anything, and never interleaves
  checkpoints with the first. The kernel drops the lock when its holder exits,
  however it dies (kill -9 included), so a lock is never stale on one host. On NFS
  (v4) `flock` is a lease the server expires when the client stops renewing it.
  The file holds the owner's host, pid and start time for the message.
  """

  def __init__(self, workdir: str, process_index: int = 0):
    self.path = os.path.join(workdir, f".lock.process{process_index}")
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      owner = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise WorkdirError(
          f"The workdir {os.path.dirname(self.path)} is in use by another run "
          f"({owner}; lock {self.path}). Wait for it to finish or stop it, or pass "
          "another --workdir.") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"host {socket.gethostname()} pid {os.getpid()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Releases the lock.
      self._fd = None


def write_config(workdir: str, config) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config_dict(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
