import os

from django.http import HttpRequest, JsonResponse

from replies.contrib.django import get_app
from shop.agents import square as square_agent


def square(request: HttpRequest, n: int) -> JsonResponse:
    answer = square_agent.ask(n)  # the first ask in a process starts the App
    # Which web process asked, and on which reply topic: one per process.
    return JsonResponse({**answer, "web_pid": os.getpid(), "reply_to": get_app().reply_to})
