"""Writes one benchmark's section into BENCHMARKS.md, leaving the other sections as they are."""

from __future__ import annotations

import os
import pathlib

# A new file's opening; BENCHMARKS.md's own says the same and points to the hand-written notes.
HEADER = ("# Benchmarks\n\nEach section headed by a command is written whole by that command "
          "(`--out BENCHMARKS.md` replaces its own section and leaves the others) and holds only "
          "what that run measured.\n")


def write_section(out: pathlib.Path, heading: str, text: str) -> None:
    """Replaces the section that starts with ``heading`` (a ``## `` line) by ``text``, or appends it;
    written to a temporary file and renamed, so an interrupted write never truncates the file."""
    old = out.read_text() if out.is_file() else HEADER
    start = old.find(heading + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(heading))
        new = old[:start] + text + ("" if nxt < 0 else "\n" + old[nxt + 1:])
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(new.rstrip("\n") + "\n")
    os.replace(tmp, out)


def publish(text: str, out, heading: str) -> None:
    """Prints a report section and, when ``out`` names a Markdown file, writes it there."""
    print(text)
    if out:
        write_section(pathlib.Path(out), heading, text)
