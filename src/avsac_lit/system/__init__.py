"""Layer 5. The LightningModule (``module``) and what it is made of: the stage metrics, the non-
finite guards, the learning-rate warm-up, the frames a step computes, the frozen encoders'
feature cache, the allocator setting.
"""
