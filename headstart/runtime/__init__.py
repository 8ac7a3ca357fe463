"""The composition root: the data home, the supervisor that starts the broker, Ray, the shards
and the Serve app, and the demo. The only package outside ``bench`` and the CLI that imports
``actors``; nothing below imports it."""
