"""Side-by-side benchmark: raw kafka-python, Faust, and this library.

Run from the repository root::

    python -m bench                      # full run; starts Apache Kafka itself
    python -m bench --quick --json out.json
    python -m bench --broker kafka://127.0.0.1:9092

Columns, all measured in one run on one broker:

* floor: a hand-written kafka-python requester and echo process
  (:mod:`bench.floor`), no library code at all;
* Faust: faust-streaming serving the same trivial agent in a worker, and a
  Faust client asking it (in Faust's own virtualenv, ``bench/faust_side``);
* replies on Kafka: the agent of :mod:`bench.agent` in a
  ``python -m replies worker`` process, asked from this process;
* replies on ``memory://``: the same agent served in this process.

The "by turns" rows measure the floor and the library (its worker at
default settings, and at ``--loglevel warning``) in alternation, round
after round, and give each the median of its rounds: on a machine whose
speed drifts, these ratios are the steadiest.

Compare figures with each other (the ratio columns), not with another
machine's.
"""
