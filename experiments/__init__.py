"""absl launchers and ml_collections configs for memjax experiments."""
