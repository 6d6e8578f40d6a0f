"""Targets: one module per target type, all behind `base.Target`; `make_target` builds one.

TYPES is the registry: a location's `type` -> how to build its target from the location's
options and the job's folder. Each builder imports its module when it is called, so boto3,
paramiko and smbprotocol are loaded only by a configuration that uses them. A new target
type is one module and one entry here (and its name in config's TARGET_TYPES).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ..config import Job
from ..errors import PermanentError
from .base import Target, reachable

Builder = Callable[[Mapping[str, Any], str], Target]  # (location options, job folder) -> target


def _local(options: Mapping[str, Any], folder: str) -> Target:
    from .local import LocalTarget

    return LocalTarget(options["path"], folder)


def _sftp(options: Mapping[str, Any], folder: str) -> Target:
    from .sftp import SftpTarget

    return SftpTarget(options, folder)


def _ftp(options: Mapping[str, Any], folder: str) -> Target:
    from .ftp import FtpTarget

    return FtpTarget(options, folder, tls=False)


def _ftps(options: Mapping[str, Any], folder: str) -> Target:
    from .ftp import FtpTarget

    return FtpTarget(options, folder, tls=True)


def _smb(options: Mapping[str, Any], folder: str) -> Target:
    from .smb import SmbTarget

    return SmbTarget(options, folder)


def _s3(options: Mapping[str, Any], folder: str) -> Target:
    from .s3 import S3Target

    return S3Target(options, folder)


TYPES: dict[str, Builder] = {"local": _local, "sftp": _sftp, "ftp": _ftp, "ftps": _ftps, "smb": _smb, "s3": _s3}


def make_target(job: Job) -> Target:
    """The target object for `job`'s location and folder (not yet opened); PermanentError for
    a type no module implements."""
    build = TYPES.get(job.location.type)
    if build is None:
        raise PermanentError(f"job {job.name}: unknown target type {job.location.type!r}")
    return build(job.location.options, job.folder)


__all__ = ["TYPES", "Target", "make_target", "reachable"]
