"""Targets: one module per target type, all behind `base.Target`."""
from __future__ import annotations

from ..config import Job
from ..errors import PermanentError
from .base import Target, reachable


def make_target(job: Job) -> Target:
    """The target object for `job`'s location and folder (not yet opened)."""
    kind = job.location.type
    if kind == "local":
        from .local import LocalTarget

        return LocalTarget(job.location.options["path"], job.folder)
    if kind == "sftp":
        from .sftp import SftpTarget

        return SftpTarget(job.location.options, job.folder)
    if kind in ("ftp", "ftps"):
        from .ftp import FtpTarget

        return FtpTarget(job.location.options, job.folder, tls=kind == "ftps")
    if kind == "smb":
        from .smb import SmbTarget

        return SmbTarget(job.location.options, job.folder)
    if kind == "s3":
        from .s3 import S3Target

        return S3Target(job.location.options, job.folder)
    raise PermanentError(f"job {job.name}: unknown target type {kind!r}")


__all__ = ["Target", "make_target", "reachable"]
