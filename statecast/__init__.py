"""statecast: streaming inference for stateful recurrent models.

The repository's top-level folders ``worker/``, ``models/``, ``export/`` and ``loadtest/``
are this package's subpackages; ``contract`` holds what the exporter and the worker share.
"""
