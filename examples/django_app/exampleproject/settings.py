"""Settings of the example project: only what it needs, plus ``REPLIES``."""

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["shop"]
ROOT_URLCONF = "exampleproject.urls"
WSGI_APPLICATION = "exampleproject.wsgi.application"
DATABASES: dict = {}
USE_TZ = True

# The project's replies.App: made by replies.contrib.django.get_app() on
# first use, connected by the first request that asks.
REPLIES = {
    "id": "example-django",
    "broker": os.environ.get("REPLIES_BROKER", "memory://"),
    "request_timeout": 10,
}
