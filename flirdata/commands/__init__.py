"""The arguments of each ``flirdata`` subcommand: one small module per command, light to import.

``flirdata.cli.COMMANDS`` names these modules. Each exposes ``configure_parser(parser)`` and
``run_command(args) -> int``; at module level it imports only the standard library,
``flirdata.cliargs``, ``flirdata.names`` (the backends' and presets' names, not the
backends and presets) and ``flirdata.errors``, and its ``run_command`` imports the tool it runs. So ``--help`` and a
usage error answer at once, without torch, OpenCV or albumentations (a test proves it), and a
command imports only what it needs.
"""
