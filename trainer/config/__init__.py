"""The run configuration: typed schema with defaults, YAML and command-line overrides, the DeepSpeed JSON."""
