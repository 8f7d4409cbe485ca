"""Writing files safely: atomically, and with the permissions the user's umask asks for.

``tempfile`` makes its files 0600 and its directories 0700 whatever the umask, which is right
for a scratch file and wrong for a summary or a converted model that is then renamed into
place; these helpers give the result the mode a plain ``open``/``mkdir`` would have. No MLX
here: the app and scripts import this without loading the model stack.
"""

import os
import tempfile
from pathlib import Path
from typing import Optional, Union

PRIVATE = 0o600  # for what only its owner should read (the app's conversations)


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (thread-safe there)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it and put it back
    os.umask(mask)
    return mask


def write_atomic(path: Union[str, Path], data: Union[str, bytes], mode: Optional[int] = None) -> None:
    """Temporary file beside ``path``, flushed, given its mode, then renamed over it: never a
    half-written file, and an interrupted write leaves the old one as it was.

    ``mode``: None gives what ``open`` would (0666 less the umask); ``PRIVATE`` (0600) keeps a
    file to its owner whatever the umask. The mode is set before the rename, so the file is
    never readable under its own name with wider permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        binary = isinstance(data, bytes)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~current_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
