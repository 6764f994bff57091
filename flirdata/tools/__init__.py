"""The tools users run on a dataset: ``check``, ``preview``, ``export`` and ``bench``.

Each tool is one module (or package) with ``configure_parser(parser)`` and
``run_command(args) -> int`` for the ``flirdata`` command line, over the same runtime core
(dataset, loader, backends) that training uses.
"""
