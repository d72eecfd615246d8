"""Experiments that answer a question with several training runs (e.g. correlated labels).

May import: everything below the command line.
"""
