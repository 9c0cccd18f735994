"""The review change log, applying it to the image folder, and undoing that. Torch-free.

The log (JSON, written atomically on every mark) names the folder and one decision per file:
    {"format": 1, "data": "/abs/photos", "classes": [...],
     "decisions": {"Cat/12.jpg": {"action": "relabel", "to": "Dog"}, "Dog/3.jpg": {"action": "remove"}, ...}}
Paths are relative to `data`, starting with the class folder the file had when it was marked.

`apply_log` moves files and never deletes one: relabel -> data/<to>/<name>, remove ->
<quarantine>/<class>/<name> (NAME.from-<class>.EXT when the name is taken there). Every move is
checked before the first (the file is still where it was marked, nothing is in the way,
everything is on one file system so each move is a rename); the undo log is written before the
first move; if a move fails, the ones done are moved back.
`undo` reverses an applied undo log, newest first, and marks it undone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import DataError, UsageError
from cnnctl.io import read_json, write_json

FORMAT = 1
ACTIONS = ("relabel", "remove", "fine", "labels")


def new_log(data: str, classes: list[str], reading: dict[str, str] | None = None) -> dict[str, Any]:
    """A new change log of an image folder, or (`reading` given) of a label file (review/rewrite.py)."""
    log = {"format": FORMAT, "data": os.path.abspath(data), "classes": list(classes), "decisions": {}}
    if reading is not None:
        log.update(label_file=True, reading=dict(reading))
    return log


def mark(
    log: dict[str, Any], rel: str, action: str, to: str | None = None, labels: list[str] | None = None
) -> dict[str, Any]:
    """Record one decision (replacing an earlier one for the same file). A label file's log takes
    "labels" (the image's new label set; "relabel" to a class is the set of that one class)."""
    if action not in ACTIONS:
        raise UsageError(f"action {action!r}: choose one of {', '.join(ACTIONS)}")
    if log.get("label_file"):
        if action == "relabel":
            action, labels = "labels", [to] if to is not None else []
        if action == "labels":
            unknown = [c for c in labels or [] if c not in log["classes"]]
            if labels is None or unknown:
                raise UsageError(
                    f"labels {unknown or labels!r}: give a list of the classes ({', '.join(log['classes'][:10])})"
                )
            chosen: dict[str, Any] = {"action": "labels", "labels": sorted(set(labels), key=log["classes"].index)}
        else:
            chosen = {"action": action}
        log["decisions"][rel] = chosen
        return chosen
    if action == "labels":
        raise UsageError("a label set is for label files; in an image folder, relabel to one class")
    given = Path(rel).parts[0]
    if action == "relabel":
        if to not in log["classes"]:
            raise UsageError(f"relabel to {to!r}: not one of the classes ({', '.join(log['classes'][:10])})")
        if to == given:
            action, to = "fine", None
    decision: dict[str, Any] = {"action": action, **({"to": to} if action == "relabel" else {})}
    log["decisions"][rel] = decision
    return decision


def read_log(path: str) -> dict[str, Any]:
    log = read_json(
        path,
        UsageError,
        f"{path}: no such change log (cnnctl review writes it as you mark images)",
        "it is not a change log cnnctl review wrote",
    )
    if (
        not isinstance(log, dict)
        or log.get("format") != FORMAT
        or not isinstance(log.get("decisions"), dict)
        or "data" not in log
    ):
        raise DataError(f"{path} is not a cnnctl review change log (format {FORMAT})")
    return log


@dataclass
class Move:
    src: str
    dst: str


def undo_path(log_path: str) -> Path:
    p = Path(log_path)
    return p.with_name(p.stem + ".undo.json")


def plan(log: dict[str, Any], quarantine: str | None) -> list[Move]:
    """The moves a log asks for, each checked; refuses the whole log on the first problem."""
    data = Path(log["data"])
    quarantine_dir = Path(quarantine) if quarantine else data.parent / f"{data.name}-quarantine"
    moves: list[Move] = []
    targets: set[str] = set()
    for rel, decision in sorted(log["decisions"].items()):
        action = decision.get("action")
        if action == "fine":
            continue
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or len(parts) < 2:
            raise DataError(f"change log entry {rel!r} is not a path inside {data}; refusing the whole log")
        src = data / rel
        if not src.is_file():
            raise DataError(f"{src} is no longer there (moved since it was marked?); nothing was changed")
        if action == "relabel":
            dst = data / decision["to"] / Path(*parts[1:])
        elif action == "remove":
            dst = quarantine_dir / rel
        else:
            raise DataError(f"change log entry {rel!r} has an unknown action {action!r}; nothing was changed")
        if dst.exists() or str(dst) in targets:  # e.g. Cat/3.jpg relabelled into a Dog/ that has a 3.jpg
            dst = dst.with_name(f"{dst.stem}.from-{parts[0]}{dst.suffix}")
        if dst.exists() or str(dst) in targets:
            raise DataError(f"{dst} already exists; rename one of the files first (nothing was changed)")
        targets.add(str(dst))
        moves.append(Move(str(src), str(dst)))
    return moves


def _same_device(moves: list[Move]) -> None:
    for m in moves:
        probe = Path(m.dst).parent
        while not probe.exists():
            probe = probe.parent
        if os.stat(probe).st_dev != os.stat(m.src).st_dev:
            raise DataError(
                f"{m.dst} is on another file system than {m.src}: moves there are not atomic; pick a --quarantine folder beside the data"
            )


def _move_all(moves: list[Move]) -> None:
    """Rename every move; on a failure rename the done ones back and re-raise."""
    done: list[Move] = []
    try:
        for m in moves:
            Path(m.dst).parent.mkdir(parents=True, exist_ok=True)
            os.rename(m.src, m.dst)
            done.append(m)
    except OSError as exc:
        for m in reversed(done):
            os.rename(m.dst, m.src)
        raise DataError(
            f"moving {m.src} failed ({exc.strerror or exc}); the {len(done)} file(s) moved before it were moved back"
        ) from exc


def apply_log(log_path: str, quarantine: str | None = None) -> dict[str, Any]:
    log = read_log(log_path)
    undo_file = undo_path(log_path)
    if (
        undo_file.exists()
        and read_json(undo_file, DataError, "", "move it away to apply the log again").get("state") == "applied"
    ):
        raise UsageError(
            f"{log_path} was applied already ({undo_file}); undo it first (cnnctl review --undo {undo_file})"
        )
    if log.get("label_file"):  # rewrite the label file's rows; no image moves
        if quarantine:
            raise UsageError(
                "--quarantine is for image folders: a label file's removed rows leave the file, the images stay"
            )
        from cnnctl.review.rewrite import apply_to_file

        return apply_to_file(log, log_path, undo_file)
    moves = plan(log, quarantine)
    _same_device(moves)
    record = {
        "format": FORMAT,
        "log": os.path.abspath(log_path),
        "state": "pending",
        "moves": [m.__dict__ for m in moves],
    }
    write_json(undo_file, record)  # before the first move: a crash leaves a record of what may have moved
    try:
        _move_all(moves)
    except DataError:
        undo_file.unlink(missing_ok=True)
        raise
    record["state"] = "applied"
    write_json(undo_file, record)
    counts = {
        a: sum(1 for d in log["decisions"].values() if d.get("action") == a) for a in ("relabel", "remove", "fine")
    }
    return {"applied": len(moves), "decisions": counts, "undo": str(undo_file), "moves": record["moves"]}


def undo(undo_file: str) -> dict[str, Any]:
    record = read_json(
        undo_file, UsageError, f"{undo_file}: no such undo log", "it is not an undo log cnnctl review --apply wrote"
    )
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMAT
        or ("moves" not in record and "label_file" not in record)
    ):
        raise DataError(f"{undo_file} is not a cnnctl review undo log")
    if record.get("state") == "undone":
        raise UsageError(f"{undo_file} was undone already")
    if "label_file" in record:
        from cnnctl.review.rewrite import undo_file_record

        return undo_file_record(record, undo_file)
    moves = [Move(m["dst"], m["src"]) for m in reversed(record["moves"])]
    if record.get("state") == "pending":  # a crash during apply: only the moves that happened go back
        moves = [m for m in moves if Path(m.src).exists()]
    for m in moves:
        if not Path(m.src).is_file():
            raise DataError(f"{m.src} is not there any more; nothing was undone")
        if Path(m.dst).exists():
            raise DataError(f"{m.dst} exists again; move it away first (nothing was undone)")
    _move_all(moves)
    record["state"] = "undone"
    write_json(undo_file, record)
    return {"undone": len(moves), "undo": str(undo_file)}
