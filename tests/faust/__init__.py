"""Interoperability with faust-streaming.

Faust runs in its own virtualenv (see ``setup_venv.py``; the fixtures build
it on first use) and always in processes of its own: ``fapp.py`` is a Faust
worker serving agents, ``client.py`` is a Faust client asking agents by
topic name, and ``capture_wire.py`` records what both put on the wire into
``tests/fixtures/faust_wire.json``.  ``ours.py`` is this library's App that
Faust clients ask, served by ``python -m replies worker``.

The tests: ``test_codec_vs_faust.py`` holds our codec to the captured bytes
(no broker); ``test_interop.py`` runs each side in its own process against
the other on the suite's broker; ``test_faust_groundwork.py`` checks that
Faust's own client and worker work there.

Nothing in this package imports ``faust`` into the test process.  Note the
directory name: never put ``tests/`` itself on ``sys.path`` (that would make
``import faust`` find this package); the Faust processes get
``tests/faust`` on their path instead, so ``fapp`` is a top-level module
there and its agents get stable topic names.
"""
