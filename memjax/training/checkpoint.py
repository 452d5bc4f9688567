"""Orbax checkpoints that survive interruption, and graceful stops on SIGTERM / Ctrl-C.

`Checkpointer` wraps an Orbax `CheckpointManager`: it keeps the last few
checkpoints, saves synchronously (a checkpoint on disk is complete: Orbax
writes into a temporary directory and renames it), and restores the newest
checkpoint that restores cleanly. A checkpoint that fails to restore is
reported with its error, moved aside into `<directory>-bad/` (never deleted)
and skipped in favour of the one before it. A checkpoint written with an
older state structure can be restored through a fallback template and
upgraded (`restore_latest(..., fallbacks=...)`).

`GracefulStop` turns SIGTERM and SIGINT (Ctrl-C) into a flag the training
loop polls between steps, so the loop can save a checkpoint and return.
"""

from __future__ import annotations

import logging as std_logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


class _QuietOrbax(std_logging.Filter):
  """Drops Orbax's INFO chatter (a dozen lines per save) from the absl log."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


logging.get_absl_logger().addFilter(_QuietOrbax())


class Checkpointer:
  """Saves and restores a training state pytree under `directory`.

  Args:
    directory: where checkpoints go, one sub-directory per step.
    max_to_keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    if not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(f"max_to_keep must be an integer >= 1; got {max_to_keep!r}")
    self.directory = os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """The steps that have a checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Writes `state` as the checkpoint of `step` (a no-op if it already exists)."""
    if step in self._manager.all_steps():
      return
    start = time.perf_counter()
    self._manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()
    logging.info("saved checkpoint at step %d in %.2fs", step, time.perf_counter() - start)

  def restore_latest(self, template: Any,
                     fallbacks: Sequence[tuple[Any, Callable[[Any], Any]]] = ()
                     ) -> tuple[int, Any] | None:
    """The newest checkpoint that restores, as (step, state); None if there is none.

    Args:
      template: a pytree with the structure, shapes and dtypes of the saved
        state (for example the freshly initialised state).
      fallbacks: (old_template, upgrade) pairs for checkpoints written with an
        older state structure: when `template` does not fit a checkpoint, each
        old template is tried in turn and the first that restores is returned
        as `upgrade(restored)`. Only a checkpoint that fits none of them is
        moved aside.
    """
    for step in reversed(self.steps()):
      try:
        state = self._restore(step, template, fallbacks)
      except Exception as e:  # any failure: report it, keep the files, try the previous one
        self._set_aside(step, e)
        continue
      logging.info("restored checkpoint at step %d from %s", step, self.directory)
      return step, state
    return None

  def _restore(self, step: int, template: Any, fallbacks) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(template))
    except Exception as error:
      for old_template, upgrade in fallbacks:
        try:
          old = self._manager.restore(step, args=ocp.args.StandardRestore(old_template))
        except Exception:  # not this structure either
          continue
        logging.info("checkpoint at step %d has an older structure; upgraded it", step)
        return upgrade(old)
      raise error

  def _set_aside(self, step: int, error: Exception) -> None:
    bad_dir = self.directory + "-bad"
    os.makedirs(bad_dir, exist_ok=True)
    source = os.path.join(self.directory, str(step))
    target = os.path.join(bad_dir, f"{step}-{int(time.time())}")
    message = (f"checkpoint at step {step} failed to restore ({type(error).__name__}: "
               f"{str(error).splitlines()[0] if str(error) else ''}); moved it to {target} "
               "and trying the one before it")
    logging.warning(message)
    print(f"warning: {message}", flush=True)
    self._manager.close()
    if os.path.exists(source):
      shutil.move(source, target)
    self._manager = self._open()  # forget the moved step

  def close(self) -> None:
    self._manager.close()


class GracefulStop:
  """Context manager: SIGTERM and SIGINT set `requested` instead of killing the process.

  A second Ctrl-C while a stop is pending raises KeyboardInterrupt as usual.
  Outside the main thread, where handlers cannot be installed, it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signum
    logging.warning("received %s: stopping after this step and saving a checkpoint",
                    signal.Signals(signum).name)

  def __enter__(self) -> GracefulStop:
    try:
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    except ValueError:  # not the main thread
      self._previous.clear()
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
