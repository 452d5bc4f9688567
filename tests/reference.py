"""NumPy references for the pure layer, written from the papers' equations.

Deliberately naive (explicit loops over slots and heads, float64) so that they
share no code or vectorisation trick with memjax.
"""

from __future__ import annotations

import math

import numpy as np


def cosine_similarity(memory, key):
  out = np.zeros(len(memory))
  kn = math.sqrt(sum(float(k) ** 2 for k in key))
  for i, row in enumerate(memory):
    rn = math.sqrt(sum(float(x) ** 2 for x in row))
    dot = sum(float(a) * float(b) for a, b in zip(row, key))
    out[i] = dot / (rn * kn) if rn > 0 and kn > 0 else 0.0
  return out


def softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def content_weights(memory, key, strength):
  return softmax(strength * cosine_similarity(memory, key))


def interpolate(content_w, prev_w, gate):
  return gate * np.asarray(content_w, np.float64) + (1 - gate) * np.asarray(prev_w, np.float64)


def shift(w, s):
  """w~[i] = sum_j w[j] s[(i - j) mod N], kernel index S//2 meaning shift 0."""
  n, size = len(w), len(s)
  out = np.zeros(n)
  for i in range(n):
    for j in range(n):
      for offset in range(-(size // 2), size // 2 + 1):
        if (j + offset) % n == i:
          out[i] += w[j] * s[offset + size // 2]
  return out


def sharpen(w, gamma):
  p = np.asarray(w, np.float64) ** gamma
  return p / p.sum()


def read(memory, w):
  memory = np.asarray(memory, np.float64)
  return sum(w[i] * memory[i] for i in range(len(memory)))


def write(memory, weights, erase, add):
  """Multi-head erase (all heads) then add (all heads); weights [H, N]."""
  m = np.array(memory, np.float64)
  n, width = m.shape
  for h in range(len(weights)):
    for i in range(n):
      for j in range(width):
        m[i, j] *= 1 - weights[h][i] * erase[h][j]
  for h in range(len(weights)):
    for i in range(n):
      for j in range(width):
        m[i, j] += weights[h][i] * add[h][j]
  return m


def update_usage(usage, write_w, free_gates, read_w):
  n = len(usage)
  out = np.zeros(n)
  for i in range(n):
    psi = 1.0
    for r in range(len(free_gates)):
      psi *= 1 - free_gates[r] * read_w[r][i]
    out[i] = (usage[i] + write_w[i] - usage[i] * write_w[i]) * psi
  return out


def allocation_weights(usage, eps=1e-6):
  u = [eps + (1 - eps) * float(x) for x in usage]
  order = sorted(range(len(u)), key=lambda i: u[i])
  out = np.zeros(len(u))
  prod = 1.0
  for idx in order:
    out[idx] = (1 - u[idx]) * prod
    prod *= u[idx]
  return out


def write_weights(content_w, alloc_w, write_gate, alloc_gate):
  return np.array([write_gate * (alloc_gate * a + (1 - alloc_gate) * c)
                   for c, a in zip(content_w, alloc_w)])


def update_precedence(p, w):
  total = sum(w)
  return np.array([(1 - total) * p[i] + w[i] for i in range(len(p))])


def update_link(link, p, w):
  n = len(p)
  out = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      if i != j:
        out[i, j] = (1 - w[i] - w[j]) * link[i][j] + w[i] * p[j]
  return out


def directional_weights(link, rw):
  n = len(rw)
  fwd = np.array([sum(link[i][j] * rw[j] for j in range(n)) for i in range(n)])
  bwd = np.array([sum(link[j][i] * rw[j] for j in range(n)) for i in range(n)])
  return fwd, bwd
