"""The run folder: built in ``runs/.<name>.partial/``, renamed to ``runs/<name>/`` when the run ends.

A run that fails on bad input leaves nothing. An interrupted run (Ctrl-C, SIGTERM, or an error after a
round finished) keeps its partial folder, with the command that started it, so that
``edge-distill --resume runs/<name>`` continues it after the last finished round.

Example:
    >>> folder = RunFolder(Path("runs/pi"), resume=False)  # doctest: +SKIP
    >>> with folder.building(["--profile", "raspberry-pi"]) as work:  # doctest: +SKIP
    ...     (work / "report.json").write_text("{}")
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_distill.atomic import write_json_atomic
from edge_distill.errors import EdgeDistillError, RunInterrupted

COMMAND_FILE = "command.json"


class RunFolder:
    """Where one run is written, and whether it continues an interrupted one."""

    def __init__(self, final: Path, *, resume: bool) -> None:
        self.final, self.resume = Path(final), resume
        self.partial = self.final.parent / f".{self.final.name}.partial"

    def check(self) -> None:
        """Refuse to overwrite a finished run, to start over an interrupted one, or to resume nothing."""
        if self.final.exists() and (not self.final.is_dir() or any(self.final.iterdir())):
            raise EdgeDistillError(
                f"Run folder {self.final} already exists; pass another --out or remove it."
            )
        if self.resume and not self.partial.is_dir():
            raise EdgeDistillError(
                f"There is no interrupted run to resume at {self.final} (no {self.partial.name} beside it); "
                "run without --resume to start it."
            )
        if not self.resume and self.partial.exists():
            raise EdgeDistillError(
                f"An interrupted run is kept at {self.partial}; continue it with `edge-distill --resume "
                f"{self.final}`, or remove that folder to start over."
            )

    @contextmanager
    def building(self, command: list[str] | None) -> Iterator[Path]:
        """Yield the partial folder; rename it to the final one when the block ends.

        Bad input (an EdgeDistillError before any round finished) removes it; an interruption, or any
        failure after a round finished, keeps it for ``--resume`` and says so.
        """
        self.check()
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(exist_ok=self.resume)
        if command is not None and not (self.partial / COMMAND_FILE).exists():
            write_json_atomic(self.partial / COMMAND_FILE, {"argv": [*command, "--out", str(self.final)]})
        try:
            yield self.partial
        except KeyboardInterrupt:
            raise RunInterrupted(self.kept_sentence("Interrupted")) from None
        except EdgeDistillError:
            if not self.finished_rounds():
                shutil.rmtree(self.partial, ignore_errors=True)
            raise
        except Exception as error:
            if not self.finished_rounds():
                shutil.rmtree(self.partial, ignore_errors=True)
                raise
            raise RunInterrupted(self.kept_sentence(f"Stopped by {type(error).__name__}: {error}")) from error
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)

    def finished_rounds(self) -> int:
        return len(list(self.partial.glob("rounds/round-*/round.json")))

    def kept_sentence(self, what: str) -> str:
        done = self.finished_rounds()
        kept = f"its {done} finished round(s) are" if done else "its training checkpoints are"
        return (
            f"{what}; {kept} kept ({self.partial}): continue with `edge-distill --resume {self.final}` "
            "(training resumes from its last finished epoch)."
        )


def stored_command(run: Path) -> list[str] | None:
    """The command line an interrupted run was started with (None when it was started from Python)."""
    path = RunFolder(run, resume=True).partial / COMMAND_FILE
    if not path.is_file():
        return None
    return list(json.loads(path.read_text())["argv"])
