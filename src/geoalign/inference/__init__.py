"""Inference: any `Locator` over photos or features, gallery search and its on-disk cache."""
