"""XLA compiler options that memjax's trainers pass to `jax.jit`, checked once.

`jax.jit(f, compiler_options=...)` applies options to one function only (unlike
the process-wide `XLA_FLAGS`). An XLA build that does not know an option, or
one of its values, fails every compile that uses it; `cpu_options` tries the
options once on a tiny function and, if they are rejected, warns and returns
None (compile with XLA's defaults).

  step = jax.jit(train_step, donate_argnums=1,
                 compiler_options=xla.cpu_options(xla.IN_PLACE_MEMORY))
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging

# XLA:CPU's copy insertion, without region analysis, copies a donated buffer
# that is both read (a lookup over the memory) and then updated in place (the
# memory's write) in one program, twice: it cannot see that the read is done
# before the write. With it the memory is written in place. For the memory
# transformer block with a full 64k-token memory, side by side
# (`benchmarks/memory_block.py --methods=copies`): 64 x 4 heads 250 -> 167 us
# per token, 1,024 x 8 heads 2,793 -> 2,042 (results unchanged: it only
# changes which buffers are reused).
IN_PLACE_MEMORY = {"xla_cpu_copy_insertion_use_region_analysis": True}


def cpu_options(options: Mapping[str, str | bool]) -> dict[str, str | bool] | None:
  """`options` when the default backend is the CPU and XLA accepts them, else None."""
  if jax.default_backend() != "cpu":
    return None
  return accepted(tuple(sorted(options.items())))


@functools.cache
def accepted(options: tuple[tuple[str, str | bool], ...]) -> dict[str, str | bool] | None:
  """dict(options) if a compile with them succeeds (checked once per set), else None."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
  except Exception as e:  # XLA reports unknown options as various errors
    logging.warning("XLA options %s not accepted (%s); compiling without them",
                    dict(options), str(e).splitlines()[0])
    return None
  return dict(options)
