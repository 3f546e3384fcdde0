"""Agents: functions that serve requests, and the handles that ask them."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional

from replies.topic import Topic

if TYPE_CHECKING:
    from replies.app import App

__all__ = ["Agent"]


class Agent(Topic):
    """A handler registered with ``@app.agent()``; ask it like a topic.

    The handler gets each request's decoded value (and its Kafka key as
    ``key=`` if it takes a ``key`` parameter); its return value is the
    reply. A generator handler streams: each yielded value is a reply to
    the same request. Calling the agent object calls the handler directly.

    Attributes:
        name: the agent's name (the function's name by default).
        topic_name: the request topic, ``f"{app.id}-{name}"`` by default.
        group_id: the consumer group of its workers, ``f"{app.id}-{name}"``.
        concurrency: how many requests one process handles at once.
        partitions: partitions of its topic when this library creates it.
        dead_letter_topic: where records it could not serve are copied
            (with headers naming the failure), or ``None`` (the default).
        max_in_flight: records one process holds at most (queued for a
            handler, being handled, or waiting for their reply's broker
            acknowledgement) before it stops fetching more.
        max_in_flight_bytes: the same bound in bytes of request keys and
            values.
    """

    #: Default of ``max_in_flight``: enough to keep a pipelined ``join``
    #: busy on a real broker.
    DEFAULT_MAX_IN_FLIGHT = 1000
    #: Default of ``max_in_flight_bytes`` (16 MiB).
    DEFAULT_MAX_IN_FLIGHT_BYTES = 16 * 1024 * 1024

    def __init__(
        self,
        app: "App",
        function: Callable[..., Any],
        *,
        name: Optional[str] = None,
        topic: Optional[str] = None,
        concurrency: int = 1,
        partitions: Optional[int] = None,
        dead_letter_topic: Optional[str] = None,
        max_in_flight: Optional[int] = None,
        max_in_flight_bytes: Optional[int] = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        if max_in_flight is None:
            max_in_flight = self.DEFAULT_MAX_IN_FLIGHT
        if max_in_flight_bytes is None:
            max_in_flight_bytes = self.DEFAULT_MAX_IN_FLIGHT_BYTES
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        if max_in_flight_bytes < 1:
            raise ValueError(f"max_in_flight_bytes must be >= 1, not {max_in_flight_bytes}")
        if partitions is not None and partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions}")
        self.name = name or function.__name__
        super().__init__(app, topic or f"{app.id}-{self.name}")
        self.function = function
        self.group_id = f"{app.id}-{self.name}"
        self.concurrency = concurrency
        self.partitions = partitions
        self.dead_letter_topic = dead_letter_topic
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.is_generator = inspect.isgeneratorfunction(function)
        self._pass_key = accepts_key(function)
        self.__doc__ = function.__doc__

    def invoke(self, value: Any, key: Optional[bytes]) -> Any:
        """Run the handler on one request, as a worker does."""
        if self._pass_key:
            return self.function(value, key=key)
        return self.function(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


def accepts_key(function: Callable[..., Any]) -> bool:
    """Whether ``function`` takes a ``key`` keyword (or ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == "key" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        or p.kind is p.VAR_KEYWORD
        for p in parameters
    )
