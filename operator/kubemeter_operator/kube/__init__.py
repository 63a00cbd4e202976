"""The operator's writes to the Kubernetes API (status patches, Events), behind our errors."""
