"""Reliability under faults, hostile input and long runs: nothing lost, nothing leaked, nothing hung.

What runs in the normal test run (about a minute on two cores):

* ``test_fault_injection.py``: 300 seeded scenarios (x2 loops) of a chaos client and a chaos origin through
  the proxy; a failure prints each failing seed, its scenario and ``FASTPIPE_CHAOS_SEEDS=...`` to replay it.
  ``FASTPIPE_CHAOS_RUNS=N`` / ``FASTPIPE_CHAOS_BASE=B`` run other seeds (``make fuzz`` runs thousands).
* ``test_chaos_verdict.py``: the same verdict applied to a plain byte relay must fail (it can fail).
* ``hostile/test_smuggling_and_parsing.py``: smuggling and malformed requests against a strict origin.
* ``hostile/test_fuzz_protocol.py``: hypothesis fuzz target on the proxy's server protocol
  (``FASTPIPE_FUZZ_EXAMPLES=N`` for a longer, freshly random run).
* ``test_slowloris.py``, ``test_long_exchanges.py``: timeouts cut silence, never slow but live exchanges.

Outside the test run: ``tools/soak.py`` (``make soak``) and ``tools/memcheck.py`` (``make memcheck``).
"""
