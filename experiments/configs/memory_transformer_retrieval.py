r"""Memory-augmented transformer on long-range retrieval (window 256, kNN memory).

  python -m experiments.train \
      --config=experiments/configs/memory_transformer_retrieval.py --workdir=runs/mt_retrieval
  python -m experiments.train \
      --config=experiments/configs/memory_transformer_retrieval.py:smoke --workdir=/tmp/mt_smoke

Trains on sequences of 256, 512 and 2,048 tokens (three phases), then
measures retrieval accuracy at distances from 64 to 65,536 tokens with a 16k-
and a 64k-token external memory, and without external memory (the same
weights, local window only).
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.trainer = "memory_transformer"
  c.seed = 0

  c.vocab = ml_collections.ConfigDict()
  c.vocab.num_keys = 128
  c.vocab.num_values = 64
  c.vocab.num_filler = 32

  c.model = ml_collections.ConfigDict()
  c.model.features = 64
  c.model.num_layers = 1
  c.model.num_heads = 4
  c.model.window = 256
  c.model.memory_layers = (0,)
  c.model.top_k = 8
  c.model.num_memory_slots = 4
  c.model.key_conv = 2
  c.model.mlp_features = 128
  c.model.qk_scale_init = 10.0

  c.train = ml_collections.ConfigDict()
  c.train.segment_length = 128
  # (steps, sequence length, batch): first within the window, then beyond it.
  c.train.phases = ((300, 256, 16), (250, 512, 8), (150, 2048, 4))
  c.train.memory_size = 2048
  c.train.min_pairs = 1
  c.train.max_pairs = 32
  c.train.learning_rate = 3e-3
  c.train.scalar_lr_multiplier = 10.0
  c.train.warmup_steps = 50
  c.train.final_lr_fraction = 0.3
  c.train.grad_clip = 1.0
  c.train.weight_decay = 0.0
  c.train.log_every = 25

  c.eval = ml_collections.ConfigDict()
  c.eval.segment_length = 256
  # "all", "none" or comma-separated suite names; suites already in metrics.jsonl are skipped.
  c.eval.run_suites = "all"
  c.eval.suites = ml_collections.ConfigDict()
  c.eval.suites.local_only = dict(
      use_memory=False, memory_size=None, batch=16, pairs_per_distance=12,
      distances=(64, 128, 192, 256, 320, 512, 1024, 4096, 16384))
  c.eval.suites.memory_16k = dict(
      use_memory=True, memory_size=16384, batch=8, pairs_per_distance=16,
      distances=(64, 192, 320, 1024, 2048, 4096, 8192, 16384))
  c.eval.suites.memory_64k = dict(
      use_memory=True, memory_size=65536, batch=4, pairs_per_distance=32,
      distances=(1024, 16384, 32768, 65536))
  # The same evaluations (same data) with the approximate memory (memjax.ivf):
  # C = N / 64 k-means cells per head fitted on the keys of other sequences
  # (calibration_batch x calibration_length tokens), lists of list_size
  # entries, `probes` lists searched per query; recall@k against the exact
  # search is measured at every query.
  ivf = dict(search="ivf", calibration_batch=2, calibration_length=8192, list_size=256,
             probes=8, measure_recall=True)
  c.eval.suites.memory_16k_ivf = dict(
      c.eval.suites.memory_16k.to_dict(), data_from="memory_16k", num_lists=256, **ivf)
  # At 64k, lists of 2 x the mean load and 4 probes: the setting benchmarks/memory_block.py
  # times (P L = 512 candidates per query).
  c.eval.suites.memory_64k_ivf = dict(
      c.eval.suites.memory_64k.to_dict(), data_from="memory_64k", num_lists=1024,
      **dict(ivf, list_size=128, probes=4))

  if arg == "small":  # the notebook's small setting: about a minute on a 2-core CPU
    c.vocab.num_keys = 32
    c.vocab.num_values = 16
    c.vocab.num_filler = 16
    c.model.features = 32
    c.model.num_heads = 2
    c.model.window = 16
    c.model.top_k = 8
    c.model.mlp_features = 64
    c.train.segment_length = 16
    c.train.phases = ((400, 64, 16),)
    c.train.memory_size = 64
    c.train.max_pairs = 8
    c.train.warmup_steps = 20
    c.train.log_every = 50
    c.eval.segment_length = 16
    c.eval.suites = ml_collections.ConfigDict()
    c.eval.suites.local_only = dict(use_memory=False, memory_size=None, batch=8,
                                    pairs_per_distance=4, distances=(8, 32, 128, 512))
    c.eval.suites.memory_1k = dict(use_memory=True, memory_size=1024, batch=8,
                                   pairs_per_distance=4, distances=(8, 32, 128, 512))
  elif arg == "smoke":
    c.model.features = 16
    c.model.num_layers = 1
    c.model.memory_layers = (0,)
    c.model.window = 16
    c.model.top_k = 4
    c.model.mlp_features = 32
    c.train.segment_length = 8
    c.train.phases = ((3, 16, 4), (3, 32, 2))
    c.train.memory_size = 32
    c.train.max_pairs = 4
    c.train.log_every = 2
    c.eval.segment_length = 16
    c.eval.suites = ml_collections.ConfigDict()
    c.eval.suites.local_only = dict(use_memory=False, memory_size=None, batch=2,
                                    pairs_per_distance=2, distances=(8, 40))
    c.eval.suites.memory = dict(use_memory=True, memory_size=64, batch=2,
                                pairs_per_distance=2, distances=(8, 40))
    c.eval.suites.memory_ivf = dict(c.eval.suites.memory.to_dict(), data_from="memory",
                                    search="ivf", calibration_batch=2, calibration_length=64,
                                    num_lists=4, list_size=32, probes=2, measure_recall=True)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; known: small, smoke")
  return c
