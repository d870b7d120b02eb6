"""Layer 4. A checkpoint file: read and verified, its config (checked before anything is built from
it: ``trust``; older layouts read in today's: ``versions``), the frozen encoders it leaves out
(``encoders``), written whole (``writer``), and the published AVSegFormer files' keys
(``official``).
"""
