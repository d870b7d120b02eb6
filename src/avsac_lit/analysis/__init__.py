"""Layer 7. Tables and figures from finished runs: finding runs (``runs``), the quantities they
are tabulated in (``quantities``), the paper-style table and its Markdown (``table``), paired
claims (``paired``, ``claims``), the marks for runs of different versions (``versions``), the CSV
(``table_csv``), plots (``plots``), the listening table (``listening``). Never imports Lightning.
"""
