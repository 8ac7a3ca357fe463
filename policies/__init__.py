"""Bandit and rule policies, one module each behind ``policies.base`` (issue 5)."""
