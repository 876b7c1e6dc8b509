"""``--help`` for the config-driven mains (launch.train, launch.pipeline, launch.analyze).

absl's own ``--help`` knows only the flags, not the keys of the ml-collections config behind
``--config``, and exits 1. This prints the main's usage (its docstring), its flags, and, with
``--config FILE[:ARG]``, the config file's docstring (its commands and ``arg`` keys) and every key
of the config that file builds, with its default and a one-line meaning. The meanings are the
comments beside (or just above) each key in the config files, so they live in one place.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import pathlib
import re
import sys
import textwrap
import tokenize
from typing import Iterable, Sequence

HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-help", "--help=true")
CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
# The flags the config-driven mains mark required (absl keeps that in validators, not on the flag).
REQUIRED = ("config", "workdir", "out")


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv[1:])


def _comments(source: str) -> list[tuple[int, int, str]]:
    """(line, column, text) of every comment, found by the tokenizer (so never inside a string)."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.start[1], tok.string.lstrip("#").strip()))
    return out


def _first_sentence(text: str) -> str:
    """The comment's first sentence: the one-line meaning (a comment may go on with the why)."""
    match = re.search(r"(?<![.\s][a-z])(?<=[a-z0-9)\]'\"])\.(\s|$)", text)
    return text[:match.start() + 1] if match else text


def _attribute_path(node) -> str | None:
    """``c.student.quant`` -> ``student.quant`` (the first name is the variable holding the config)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return ".".join(parts) if parts and isinstance(node, ast.Name) else None


def _keyword_paths(node, prefix: str, out: dict[int, list[str]]) -> None:
    """The keyword arguments of the calls in ``node`` (``dict(epochs=2.0, ...)``, nested), by line."""
    if not isinstance(node, ast.Call):
        return
    for kw in node.keywords:
        if kw.arg:
            dotted = f"{prefix}.{kw.arg}" if prefix else kw.arg
            if dotted not in out.setdefault(kw.lineno, []):
                out[kw.lineno].append(dotted)
            _keyword_paths(kw.value, dotted, out)
    for arg in node.args:
        _keyword_paths(arg, prefix, out)


def _key_lines(tree) -> dict[int, list[str]]:
    """``{line: [dotted key paths set on that line]}``: attribute assignments (``c.kd.mode = ...``)
    and keyword arguments (``dict(epochs=2.0)``, under the attribute they are assigned to)."""
    keywords: dict[int, list[str]] = {}
    assigned: dict[int, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            _keyword_paths(node, "", keywords)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            path = _attribute_path(node.targets[0])
            if path:
                assigned.setdefault(node.targets[0].lineno, []).append(path)
                _keyword_paths(node.value, path, assigned)
    return {**keywords, **assigned}


def key_meanings(files: Iterable[pathlib.Path]) -> dict[str, str]:
    """``{dotted key path: meaning}`` from the comments of the config files, earlier files first.

    A key's meaning is the comment on the line that sets it, continued by comment-only lines
    starting in the same column below, else the comment-only lines just above it. Paths are as
    the file writes them (``student.quant``, a keyword's name), and looked up by suffix.
    """
    meanings: dict[str, str] = {}
    for path in files:
        source = path.read_text()
        lines = source.splitlines()
        by_line = {line: (col, text) for line, col, text in _comments(source)}

        def comment_only(number: int) -> bool:
            return number in by_line and not lines[number - 1][:by_line[number][0]].strip()

        for line, keys in sorted(_key_lines(ast.parse(source)).items()):
            if len(keys) != 1 or keys[0] in meanings:
                continue  # several keys on one line: whose the comment is, is not known
            if line in by_line and not comment_only(line):
                col = by_line[line][0]
                parts, below = [by_line[line][1]], line + 1
                while comment_only(below) and by_line[below][0] == col:
                    parts.append(by_line[below][1])
                    below += 1
            else:
                parts, above = [], line - 1
                while comment_only(above):
                    parts.insert(0, by_line[above][1])
                    above -= 1
            if parts:
                meanings[keys[0]] = _first_sentence(" ".join(parts))
    return meanings


def _flatten(node, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    # In the order the config file sets them (ConfigDict.keys() sorts), so related keys stay together.
    for key in getattr(node, "_fields", None) or node.keys():
        value = node[key]
        dotted = f"{prefix}{key}"
        if hasattr(value, "keys") and not isinstance(value, dict):
            out.extend(_flatten(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


def meaning_of(dotted: str, meanings: dict[str, str]) -> str:
    """The meaning recorded for the longest suffix of ``dotted`` (``stages.tws.stage1.epochs``
    finds ``stage1.epochs``, then ``epochs``); "" when none."""
    parts = dotted.split(".")
    for start in range(len(parts)):
        found = meanings.get(".".join(parts[start:]))
        if found:
            return found
    return ""


def config_files(config_path: pathlib.Path) -> list[pathlib.Path]:
    """The config file and the config modules it imports from its package (``from configs import
    common``), whose comments describe the keys they set."""
    files = [config_path]
    tree = ast.parse(config_path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == config_path.parent.name:
            for alias in node.names:
                sibling = config_path.parent / f"{alias.name}.py"
                if sibling.is_file() and sibling not in files:
                    files.append(sibling)
    return files


def load_config(path: str, arg: str):
    spec = importlib.util.spec_from_file_location("_config_for_help", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(arg or None)


def _format_value(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(str(v) if not isinstance(v, str) else repr(v) for v in value) + \
               ("," if len(value) == 1 else "") + ")"
    return str(value)


def config_keys_text(path: str, arg: str, shown: str | None = None) -> str:
    """The config file's docstring, then one line per key: ``--config.KEY=DEFAULT  meaning``."""
    if not pathlib.Path(path).is_file():
        raise ValueError(f"--config {path}: no such file")
    module, config = load_config(path, arg)
    meanings = key_meanings(config_files(pathlib.Path(path)))
    rows = [(f"--config.{k}={_format_value(v)}", meaning_of(k, meanings)) for k, v in _flatten(config)]
    width = min(max(len(r[0]) for r in rows), 56)
    lines = [f"  {flag:<{width}}  {meaning}".rstrip() for flag, meaning in rows]
    doc = textwrap.dedent(module.__doc__ or "").strip()
    named = f"{shown or path}{':' + arg if arg else ''}"
    return "\n".join([f"Config {named}:", "", textwrap.indent(doc, "  "), "",
                      f"Keys of {named} (override any with --config.KEY=VALUE):",
                      *lines])


def available_configs() -> str:
    rows = []
    for path in sorted(CONFIGS_DIR.glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        rows.append(f"  configs/{path.name:<14} {doc.split(chr(10))[0]}")
    return "\n".join(rows)


def _flags_text(flag_values, main_module: str) -> str:
    """The main's own flags and the shared ones it defines through launch.common."""
    lines = []
    for module, flags in flag_values.flags_by_module_dict().items():
        if module not in (main_module, "launch.common", sys.argv[0]):
            continue
        for flag in sorted(flags, key=lambda f: f.name):
            required = " (required)" if flag.name in REQUIRED else ""
            default = "" if flag.default in (None, False) else f" (default: {flag.default})"
            lines.append(f"  --{flag.name}: {flag.help}{required or default}")
    return "\n".join(lines)


def help_text(doc: str, argv: Sequence[str], flag_values, main_module: str) -> str:
    from launch import common
    parts = [textwrap.dedent(doc or "").strip(), "", "Flags:", _flags_text(flag_values, main_module),
             "  --help: this text (with --config FILE, also the config's keys)"]
    found = common._config_file(list(argv))
    # launch.pipeline and launch.analyze take one config file each, named as they are.
    own = CONFIGS_DIR / f"{main_module.rpartition('.')[2]}.py"
    if found is not None:
        parts += ["", config_keys_text(*found)]
    elif own.is_file():
        parts += ["", config_keys_text(str(own), "", f"configs/{own.name}")]
    else:
        parts += ["", "Config files (give one with --config to list its keys: --config FILE --help):",
                  available_configs()]
    return "\n".join(parts) + "\n"


def print_help_and_exit(argv: Sequence[str]) -> None:
    """Prints the help of the running main (``__main__``) and exits 0; a bad ``--config`` file or
    argument is one line on stderr, exit 2."""
    from absl import flags
    from launch import common
    main = sys.modules["__main__"]
    main_module = getattr(main.__spec__, "name", None) if getattr(main, "__spec__", None) else None
    try:
        text = help_text(main.__doc__, argv, flags.FLAGS, main_module or "__main__")
    except (OSError, ValueError) as e:
        common.fail(str(e))
    sys.stdout.write(text)
    sys.exit(0)
