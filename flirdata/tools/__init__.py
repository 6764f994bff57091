"""The tools users run on a dataset: ``check``, ``preview``, ``export`` and ``bench``.

Each tool is one module (or package) with ``run_command(args) -> int`` for the ``flirdata``
command line, over the same runtime core (dataset, loader, backends) that training uses. Its
arguments are parsed by its module in ``flirdata.commands``, which imports the tool only to run
it: a tool may import torch and OpenCV at module level, its ``--help`` does not pay for them.
"""
