"""The transport layer: a small broker interface and its two implementations."""

from __future__ import annotations

from typing import Any, Collection, List, Mapping, Optional, Tuple

from replies.transport.base import GroupReader, Reader, Record, Transport

__all__ = ["GroupReader", "Reader", "Record", "Transport", "check_broker", "open_transport"]


def check_broker(url: str, settings: Mapping[str, Any], also_known: Collection[str] = ()) -> None:
    """Check a broker URL and kafka-python settings without connecting.

    Args:
        url: the broker URL.
        settings: kafka-python settings.
        also_known: the caller's own setting names, for "did you mean".

    Raises:
        ValueError: an unknown scheme or no host.
        TypeError: a setting no kafka-python client accepts, or one this
            library manages itself.
    """
    _parse(url)
    if settings:
        # Imported only when needed, so that memory:// never loads kafka-python.
        from replies.transport.kafka import check_settings

        check_settings(settings, also_known)


def _parse(url: str) -> Tuple[str, List[str]]:
    """Split a broker URL into its scheme and hosts (one name for memory)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"broker URL needs a scheme (kafka:// or memory://): {url!r}")
    if scheme == "memory":
        return scheme, [rest]
    if scheme == "kafka":
        hosts = [h.strip() for h in rest.rstrip("/").split(",") if h.strip()]
        if not hosts:
            raise ValueError(f"no host in broker URL {url!r}")
        return scheme, hosts
    raise ValueError(f"unknown broker URL scheme {scheme!r} in {url!r} (use kafka:// or memory://)")


def open_transport(
    url: str,
    settings: Mapping[str, Any],
    *,
    replication_factor: int = -1,
    auto_create_topics: bool = False,
    connect_timeout: Optional[float] = None,
) -> Transport:
    """Open the transport a broker URL names.

    Args:
        url: ``"kafka://host:port[,host:port...]"`` or ``"memory://[NAME]"``.
        settings: kafka-python client settings (ignored by ``memory://``).
        replication_factor: for topics created on Kafka.
        auto_create_topics: a record to a missing topic creates it (else it
            is refused with :class:`~replies.errors.NoRespondersError`).
        connect_timeout: seconds to reach a Kafka broker and log in (None:
            ``bootstrap_timeout_ms`` if set, else 10).

    Raises:
        ValueError: an unknown scheme or no host.
        TypeError: an unknown Kafka setting.
        TransportError: the Kafka broker could not be reached or refused
            the login within ``connect_timeout``; ``cause`` says why.
    """
    scheme, hosts = _parse(url)
    if scheme == "memory":
        from replies.transport.memory import MemoryTransport

        return MemoryTransport(hosts[0], auto_create_topics=auto_create_topics)
    from replies.transport.kafka import KafkaTransport

    return KafkaTransport(
        hosts,
        settings,
        replication_factor=replication_factor,
        auto_create_topics=auto_create_topics,
        connect_timeout=connect_timeout,
    )
