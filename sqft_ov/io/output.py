"""Atomic output folders: a killed run never leaves a half-written OUTPUT behind.

Every command builds its result in a hidden temporary folder next to OUTPUT (same file system, so the
final `rename` is atomic) and only moves it into place once everything has been written. The temporary
folder's name carries the writer's PID, so the next run into the same OUTPUT can tell a killed run's
leftovers (removed) from a live run's (left alone); a killed replacement's old OUTPUT is put back.

`SQFT_OV_KILL_AT=POINT[#N]` makes the process SIGKILL itself at the N-th (default first) pass through
`kill_point(POINT)`: the kill-drill tests use it to stop a run at exact places.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqft_ov.errors import ConfigError, SqftError

_passes: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process here if SQFT_OV_KILL_AT names this point (kill drills; a no-op otherwise)."""
    wanted = os.environ.get("SQFT_OV_KILL_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition("#")
    if point == name:
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def check_output(output: str | Path, overwrite: bool, inputs: tuple = ()) -> Path:
    """Refuse an existing OUTPUT unless `overwrite`, and an OUTPUT that is, holds or lies in an input.

    Called before any expensive work starts; `inputs` are the paths the command reads (--overwrite would
    otherwise delete them).
    """
    output = Path(output).expanduser().absolute()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).expanduser().absolute()
        if output == source:
            raise ConfigError(f"output {output} is also an input: choose another output path")
        if source in output.parents and source.is_dir():
            raise ConfigError(f"output {output} is inside the input {source}: choose a path outside it")
        if output in source.parents:
            raise ConfigError(f"output {output} holds the input {source}: choose another output path")
    recover_stale(output)
    if output.exists() and not overwrite:
        raise ConfigError(f"output {output} already exists: pass --overwrite to replace it, or choose another path")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a folder: remove it or choose another path")
    return output


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_pid(folder: Path, marker: str) -> int | None:
    """The PID in `.NAME<marker><pid>-XXXX`, or None for a name without one."""
    head = folder.name.rpartition(marker)[2].partition("-")[0]
    return int(head) if head.isdigit() else None


def recover_stale(output: Path) -> list[Path]:
    """Tidy what killed runs left beside OUTPUT; returns what was removed or restored.

    `.OUTPUT.tmp-PID-*` of a dead PID: half-written, removed. `.OUTPUT.old-PID-*` of a dead PID: the
    previous OUTPUT of a replacement killed between its two renames, put back if OUTPUT is missing.
    """
    if not output.parent.is_dir():
        return []
    touched = []
    for marker in (".tmp-", ".old-"):
        for folder in sorted(output.parent.glob(f".{output.name}{marker}*")):
            pid = _writer_pid(folder, marker)
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                continue  # another run is writing this OUTPUT right now
            try:
                if marker == ".old-" and not output.exists():
                    folder.rename(output)
                elif folder.is_dir():
                    shutil.rmtree(folder)
                else:
                    folder.unlink()  # a report file's temporary (write_file_atomic)
            except OSError:
                continue  # not ours to remove (permissions): it stays, and stays hidden
            touched.append(folder)
    return touched


def _write_error(exc: OSError, output: Path) -> SqftError:
    fix = {errno.ENOSPC: "free some space or choose an OUTPUT on another disk",
           errno.EDQUOT: "free some space or choose an OUTPUT on another disk",
           errno.EROFS: "choose an OUTPUT on a writable file system",
           errno.EACCES: "choose an OUTPUT in a folder you may write to",
           errno.EPERM: "choose an OUTPUT in a folder you may write to"}.get(exc.errno, "choose another OUTPUT")
    return SqftError(f"cannot write {output}: {exc.strerror or exc} (nothing was written): {fix}")


def _file_system_reason(exc: Exception, parent: Path) -> OSError | None:
    """The file-system error behind `exc`, if any: libraries (safetensors, OpenVINO) wrap ENOSPC in their own
    exception types, so a full disk is also recognised by the message or by the free space left."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return exc
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM) and \
            str(exc.filename or parent).startswith(str(parent)):  # a forbidden *input* is not a write error
        return exc
    if "No space left on device" in str(exc):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    try:
        if shutil.disk_usage(parent).free < (1 << 20):  # < 1 MiB left: whatever failed, the disk is full
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        pass
    return None


@contextlib.contextmanager
def atomic_output(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces OUTPUT, on any error it is deleted.

    Errors of the file system (a full disk, a read-only or forbidden folder) become one-line errors.
    """
    output = check_output(output, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-{os.getpid()}-", dir=output.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    except OSError as exc:
        raise _write_error(exc, output) from exc
    try:
        kill_point("output-started")
        try:
            yield tmp
        except SqftError:
            raise
        except Exception as exc:
            reason = _file_system_reason(exc, output.parent)
            if reason is not None:
                raise _write_error(reason, output) from exc
            raise
        kill_point("output-written")
        if output.exists():
            # Move the old folder aside first so that OUTPUT is never half-old; a kill between the two
            # renames leaves it in `.OUTPUT.old-PID-*`, which the next run puts back (`recover_stale`).
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-{os.getpid()}-", dir=output.parent))
            old.rmdir()
            output.rename(old)
            kill_point("output-swapping")
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(output: str | Path, overwrite: bool) -> Path:
    """Like check_output, for a single report file."""
    output = Path(output).expanduser().absolute()
    if output.exists() and not overwrite:
        raise ConfigError(f"output {output} already exists: pass --overwrite to replace it, or choose another path")
    if output.is_dir():
        raise ConfigError(f"output {output} is a folder: give a file name")
    return output


def write_file_atomic(output: str | Path, data: str | bytes, overwrite: bool = False) -> Path:
    """Write a file through a temporary sibling and a rename: readers never see half a file."""
    output = check_output_file(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.tmp-{os.getpid()}-", dir=output.parent)
    try:
        with open(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(output)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return output
