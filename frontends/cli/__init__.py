"""The admin CLI: click commands driving the core through the Registry (never through HTTP).

Public for plugins that add commands (``userplane_cli_commands``): ``State``
and ``pass_state`` (the command's settings and registry), ``OperationGroup``
and ``OperationCommand`` (commands that run as one operation, as the local
administrator), ``format_option`` and ``emit`` (``--format table|json``), and
``Duration`` (``90d``, ``12h``).
"""

from userplane.frontends.cli import (  # noqa: F401  (commands register)
    admin,
    copying,
    encryption,
    groups,
    transfer,
    users,
)
from userplane.frontends.cli.app import (
    OperationCommand,
    OperationGroup,
    State,
    cli,
    main,
    pass_state,
)
from userplane.frontends.cli.output import emit, format_option
from userplane.frontends.cli.users import Duration

__all__ = [
    "Duration",
    "OperationCommand",
    "OperationGroup",
    "State",
    "cli",
    "emit",
    "format_option",
    "main",
    "pass_state",
]
