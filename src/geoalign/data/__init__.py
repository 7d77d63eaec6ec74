"""Data: manifests, image loading, transforms, feature store and the benchmark registry."""
