"""Layer 7. A trained model outside Lightning (``trained``: ``load_trained``) and videos segmented
with it (``video``, ``outputs``).
"""
