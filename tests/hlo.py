"""Reading XLA's compiled programs in tests."""

from __future__ import annotations


def copies_of(compiled, shape) -> list[str]:
  """The lines of `compiled` (a `jax.stages.Compiled`) that copy an array of `shape`.

  XLA prints a copy as `... = f32[2,3]{1,0} copy(...)`; the array's shape is
  matched as XLA writes it, e.g. `[2,3]`.
  """
  dims = "[" + ",".join(str(int(n)) for n in shape) + "]"
  return [line for line in compiled.as_text().splitlines()
          if " copy(" in line and dims in line]
