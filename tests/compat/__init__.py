"""Compat suite: the same tests run against llama-index-workflows 2.26.1 ("llama") and procflow ("procflow").

Each behaviour is written from llama's documentation (its docs site and the docstrings its API reference is
built from) and checked against llama 2.26.1 itself: the llama side must pass. On procflow, a user's program must
run after renaming ``workflows`` to ``actors`` in its import lines (``workflows.handler`` -> ``handler``), so a
procflow failure here is a missing or different API or behaviour, named in the assertion message.

Conventions: the ``wf`` fixture (see ``conftest.py``) is the implementation under test; tests build their
events and workflows in small factory functions from ``wf`` (as a user would, from their imports), bind the
classes they need to local names (a step body never closes over ``wf``), and construct workflows with
``wf.make(cls, **kw)`` (procflow: on the module's shared ``ProcessRuntime``). Steps run in other processes on
procflow, so a test observes what happened in a step only through the run: its result, its stream, its store,
or a file.

Left out, because processes make them impossible (steps run in worker processes, on copies):

- a step mutating ``self`` (the workflow instance) or a module global, and the caller or another step seeing it;
- ``ctx.store.get`` returning the live stored object, so mutating it without ``set`` changes the state;
- a ``Resource(..., cache=True)`` being one value for every step: procflow builds it once per worker process
  (``test_compat_resources`` skips that test on procflow; ``tests/test_resources.py`` checks procflow's rule),
  and ``Workflow(resource_manager=...)`` holding live objects;
- events, results and stored values that cannot be pickled (locks, sockets, open files, generators);
- exceptions raised by steps keeping their identity or their ``__traceback__`` frames.
"""
