"""Experiments that answer questions about the product with the synthetic generator.

Each module is runnable (`python -m job.experiments.NAME --out DIR`) and writes its result
table to DIR and to stdout; docs/ holds the result of the last run and the exact command.
"""
