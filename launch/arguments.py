"""The argparse parser of the argparse mains (launch.predict, launch.size, ...).

Every main spells its flags one way, with underscores, as the absl mains (``--num_processes``) and
the config overrides (``--config.data_dir``) do. The dashed spelling each flag had before
(``--max-length``) is still accepted, unlisted, so existing commands keep working. The description
and the usage examples are printed as written, one command per line.
"""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reads ``--a-b`` as ``--a_b`` when only the latter is a flag,
    and keeps the description's and epilog's line breaks."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def _underscored(self, arg: str) -> str:
        if not arg.startswith("--") or arg == "--":
            return arg
        name, eq, value = arg.partition("=")
        spelled = name.replace("-", "_")
        spelled = "--" + spelled[2:]
        if name not in self._option_string_actions and spelled in self._option_string_actions:
            return spelled + eq + value
        return arg

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._underscored(a) for a in args], namespace)


def examples_from(doc: str | None) -> str:
    """The epilog of a main: the commands its docstring shows (its indented lines that run
    ``python -m``), one per line."""
    commands = [line.strip() for line in (doc or "").splitlines()
                if line.startswith("    ") and "python -m " in line]
    return "examples:\n" + "\n".join(f"  {c}" for c in commands) if commands else ""
