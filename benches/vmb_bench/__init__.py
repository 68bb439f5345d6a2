"""Helpers of benches/compare.py and benches/scale.py, split by responsibility (see
benches/README.md). Nothing here is run directly; the two scripts are the entry points.
"""
