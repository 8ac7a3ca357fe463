"""Headstart: real-time personalization of user onboarding.

This package is the application shell: settings, the data home, the embedded broker, NATS
streams and consumers, and the command line. Domain logic lives in ``engine``, Ray actors in
``actors``, bandit policies in ``policies``.
"""

__version__ = "0.1.0"
