"""Layer 6. One run: assembled from its config (``assemble``, ``settings``, ``loggers``), held
(``lock``) and guarded against earlier runs (``directories``), stopped (``stop``) and resumed
(``resume``, ``exact_state``), its callbacks, its audio conditions, its record, its devices, and
what every command does around its task (``wrapper``, ``job``).
"""
