"""The transport layer: a small broker interface and its two implementations."""

from __future__ import annotations

from typing import Any, Mapping

from replies.transport.base import GroupReader, Reader, Record, Transport

__all__ = ["GroupReader", "Reader", "Record", "Transport", "open_transport"]


def open_transport(url: str, settings: Mapping[str, Any], *, replication_factor: int = -1) -> Transport:
    """Open the transport a broker URL names.

    Args:
        url: ``"kafka://host:port[,host:port...]"`` or ``"memory://[NAME]"``.
        settings: kafka-python client settings (ignored by ``memory://``).
        replication_factor: for topics created on Kafka.

    Raises:
        ValueError: an unknown scheme or no host.
        TypeError: an unknown Kafka setting.
        TransportError: the Kafka client could not be created.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"broker URL needs a scheme (kafka:// or memory://): {url!r}")
    if scheme == "memory":
        from replies.transport.memory import MemoryTransport

        return MemoryTransport(rest)
    if scheme == "kafka":
        hosts = [h.strip() for h in rest.rstrip("/").split(",") if h.strip()]
        if not hosts:
            raise ValueError(f"no host in broker URL {url!r}")
        # Imported here so that memory:// never loads kafka-python.
        from replies.transport.kafka import KafkaTransport

        return KafkaTransport(hosts, settings, replication_factor=replication_factor)
    raise ValueError(f"unknown broker URL scheme {scheme!r} in {url!r} (use kafka:// or memory://)")
