"""Layer 3. Drawing clips: frames, masks, palettes, overlays and log-mel images (``draw``), for the
validation overlays, predictions and notebooks.
"""
