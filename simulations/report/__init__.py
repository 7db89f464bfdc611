"""A study's report: its tables and findings in Markdown (``markdown``) and its PNG plots (``plots``)."""
