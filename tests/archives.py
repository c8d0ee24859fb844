"""Archives the way users upload them, built in memory for tests."""

import io
import tarfile


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz holding `files` (archive path -> content) as regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
