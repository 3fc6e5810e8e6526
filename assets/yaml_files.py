"""User-edited YAML (or JSON) files read into pydantic models, with every problem reported as file:line: reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class InvalidFilesError(ValueError):
    """One or more files are malformed; the message lists each problem with file and line."""

    def __init__(self, heading: str, problems: list[Problem]):
        self.problems = problems
        super().__init__(heading + "\n" + "\n".join(f"  {p}" for p in problems))


def line_of(node: yaml.Node | None, location: tuple) -> int:
    """The line (1-based) of the YAML node at `location` (keys and list indexes), or of its nearest parent."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in location:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def read_model(path: Path, shown: str, model: type[M]) -> tuple[M | None, yaml.Node | None, list[Problem]]:
    """Parse `path` (YAML, or JSON, which YAML reads too) into `model`: (value, YAML tree, problems)."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        return None, None, [Problem(shown, 1, f"not UTF-8 text ({exc.reason})")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        return None, None, [Problem(shown, mark.line + 1 if mark else 1, f"invalid YAML: {reason}")]
    if not isinstance(data, dict):
        return None, node, [Problem(shown, 1, f"must be a mapping with the fields {', '.join(model.model_fields)}")]
    try:
        return model.model_validate(data), node, []
    except ValidationError as exc:
        return None, node, [
            Problem(shown, line_of(node, tuple(error["loc"])),
                    f"{'.'.join(map(str, error['loc'])) or 'file'}: {error['msg']}")
            for error in exc.errors()
        ]


def files_in(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted(path for pattern in patterns for path in Path(folder).glob(pattern))


def read_folder(folder: Path, patterns: tuple[str, ...], model: type[M],
                missing: str) -> tuple[list[tuple[str, M, yaml.Node]], list[Problem]]:
    """Every file of `folder` matching `patterns` read into `model`: ([(file, value, YAML tree)], problems).
    Files are named relative to the folder's parent (`prompts/a.yaml`); `missing` is the problem when none exist."""
    folder = Path(folder)
    paths = files_in(folder, patterns) if folder.is_dir() else []
    if not paths:
        return [], [Problem(str(folder), 0, missing)]
    parsed, problems = [], []
    for path in paths:
        shown = str(path.relative_to(folder.parent))
        value, node, found = read_model(path, shown, model)
        problems += found
        if value is not None:
            parsed.append((shown, value, node))
    return parsed, problems
