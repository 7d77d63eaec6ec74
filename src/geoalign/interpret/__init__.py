"""Interpretability: concept sets, concept bases, explanations of photos and global analyses.

Heavy modules (torch, matplotlib, umap) are imported by the submodules that need them, not here.
"""
