"""pytest configuration shared by the whole suite."""

import os

# One CPU device for the main suite; modules that need more start a
# subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import HealthCheck
from hypothesis import settings

settings.register_profile(
    "dev", max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
