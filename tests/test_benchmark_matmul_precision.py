"""benchmarks/matmul_precision.py times the right computation (tiny shapes)."""

import jax
import numpy as np

from benchmarks import matmul_precision


def _numpy_block_maxima(keys, queries):
  scores = np.asarray(queries, np.float64) @ np.asarray(keys, np.float64).T
  return scores.reshape(scores.shape[0], -1, matmul_precision._BLOCK).max(axis=-1)


def test_pass1_computes_the_block_maxima_of_every_chunk():
  fn, (keys, queries), flops = matmul_precision._pass1(512, 8, 4, 64, low=False)
  assert flops == 2 * 4 * 512 * 8
  np.testing.assert_allclose(fn(keys, queries), _numpy_block_maxima(keys, queries), rtol=1e-5,
                             atol=1e-5)


def test_bfloat16_pass1_is_within_the_rounding_of_its_inputs():
  fn, (keys, queries), _ = matmul_precision._pass1(512, 8, 4, 64, low=True)
  expected = _numpy_block_maxima(keys, queries)
  got = np.asarray(fn(keys, queries))
  # Both operands rounded to 8 significant bits: each product moves by at
  # most 2^-7 of |q_i k_i| (plus 2^-16), and sum |q_i k_i| <= ||q|| ||k||.
  bound = (2.0**-7 + 2.0**-16) * np.linalg.norm(queries, axis=1).max() * np.linalg.norm(
      keys, axis=1).max()
  assert np.abs(got - expected).max() <= bound
  assert np.abs(got - expected).max() > 0  # it did round


def test_square_int8_case_holds_integers():
  fn, (a, b), flops = matmul_precision._square(16, jax.numpy.int8, jax.numpy.int32)
  assert flops == 2 * 16**3
  expected = np.asarray(a, np.int64) @ np.asarray(b, np.int64).T
  np.testing.assert_array_equal(fn(a, b), expected)
