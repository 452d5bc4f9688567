"""A product-key memory memorising 32k random associations (Lample et al. 2019).

  python -m experiments.train --config=experiments/configs/product_keys.py --workdir=/tmp/pkm
  ... --config=experiments/configs/product_keys.py:mlp     (the baseline without memory)
  ... --config=experiments/configs/product_keys.py:1m      (1024^2 = 1M slots, a few steps)
  ... --config=experiments/configs/product_keys.py:smoke   (seconds, for the tests)
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.trainer = "product_keys"
  config.seed = 0
  config.model = "pkm"          # or "mlp"
  config.num_items = 32768
  config.in_features = 32
  config.num_classes = 32
  config.num_sub_keys = 128     # 128^2 = 16384 slots
  config.query_size = 64
  config.num_heads = 4
  config.k = 16
  config.value_size = 64
  config.mlp_hidden = 256
  config.batch_size = 256
  config.steps = 3000
  config.learning_rate = 3e-3
  config.eval_every = 250
  config.mesh_devices = 0       # > 1: split the value table over that many devices
  if arg == "mlp":
    config.model = "mlp"
  elif arg == "1m":
    config.num_sub_keys = 1024  # 1M slots, a 256 MiB value table
    config.steps = 30
    config.eval_every = 10
  elif arg == "smoke":
    config.num_items = 512
    config.num_sub_keys = 16
    config.query_size = 16
    config.num_heads = 2
    config.k = 4
    config.value_size = 16
    config.batch_size = 64
    config.steps = 60
    config.eval_every = 20
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: use mlp, 1m or smoke")
  return config
