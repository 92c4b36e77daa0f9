"""Integrations of syncbn with training frameworks, one optional module each.

Nothing is imported here: ``import syncbn`` and ``import syncbn.integrations`` load torch
alone, and each module (``syncbn.integrations.lightning``, ...) imports its framework only
when it is itself imported.
"""
