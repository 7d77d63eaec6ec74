"""Interpretability: explanations of photos, global analyses and their charts.

The networks they read (concept basis, text encoders) live in `geoalign.nn`, the concept sets in
`geoalign.data`. Heavy modules (torch, matplotlib, umap) are imported by the submodules that need
them, not here.
"""
