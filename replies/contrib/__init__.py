"""Integrations with web frameworks; each imports its framework only when used.

* :mod:`replies.contrib.flask`: settings from ``app.config["REPLIES"]``.
* :mod:`replies.contrib.django`: settings from ``settings.REPLIES``, and a
  test helper that serves the project's agents in-process on ``memory://``.
"""
