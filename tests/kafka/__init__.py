"""Real Kafka-compatible brokers for the tests: Apache Kafka (KRaft) and Tansu.

See :mod:`tests.kafka.harness` for the API, :mod:`tests.kafka.plugin` for
the pytest fixtures and ``python -m tests.kafka --help`` for the command line.
"""

from tests.kafka.harness import (
    DEFAULT_KAFKA_VERSION,
    Broker,
    BrokerError,
    KafkaCluster,
    TansuBroker,
    kafka_jars,
    make_broker,
)

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "Broker",
    "BrokerError",
    "KafkaCluster",
    "TansuBroker",
    "kafka_jars",
    "make_broker",
]
