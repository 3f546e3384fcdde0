"""The project's agents, served by their own process (from this folder)::

    DJANGO_SETTINGS_MODULE=exampleproject.settings python -m replies worker shop.agents:app
"""

import os
from typing import Any, Dict

from replies.contrib.django import get_app

app = get_app()


@app.agent(concurrency=8)
def square(n: int) -> Dict[str, Any]:
    """Square a number, saying which process did it."""
    return {"n": n, "square": n * n, "worker_pid": os.getpid()}
