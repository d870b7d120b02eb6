"""Layer 7. Tables and figures from finished runs: finding runs (``runs``), the paper-style table
(``table``), paired claims (``paired``, ``claims``), plots (``plots``), the listening table
(``listening``). Never imports Lightning.
"""
