"""Storage errors a retry cannot fix, recognised by their code, with what to do instead."""

from __future__ import annotations

import errno
import os
from typing import Optional

#: By the code S3 or GCS gives them.
_PERMANENT = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the block's cloudpath",
    "NotFound": "the bucket does not exist: create it, or fix the block's cloudpath",
    "AccessDenied": "access denied: give these credentials write access to the bucket",
    "Forbidden": "access denied: give these credentials write access to the bucket",
    "InvalidAccessKeyId": "the access key is not valid: check the AwsCredentials block",
    "SignatureDoesNotMatch": "the secret key is wrong: check the AwsCredentials block",
    "Unauthorized": "the credentials were refused: check the GcpCredentials block",
}

#: Local-disk errors, by errno.
_PERMANENT_OS = {
    errno.EACCES: "permission denied: make the folder writable for this user, or use another",
    errno.EPERM: "operation not permitted: make the folder writable, or use another",
    errno.EROFS: "the file system is read-only: use a writable folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the cloudpath",
    errno.EISDIR: "the path is a folder, not a file: remove the folder or fix the cloudpath",
    errno.ENOSPC: "the disk is full: free space, or use another folder",
    errno.EDQUOT: "the disk quota is exceeded: free space, or use another folder",
}


def permanent_failure(exc: Exception, cloudpath: str) -> Optional[str]:
    """What to do about ``exc`` if retrying cannot help, else ``None``."""
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_OS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{os.strerror(exc.errno)}{where}: {_PERMANENT_OS[exc.errno]}"
    code = getattr(exc, "response", {}) or {}
    code = code.get("Error", {}).get("Code") if isinstance(code, dict) else None
    code = code or type(exc).__name__  # google.api_core names its exceptions by status
    hint = _PERMANENT.get(code)
    if hint is None:
        return None
    bucket = cloudpath.split("://", 1)[1].split("/", 1)[0]
    return f"{code} for bucket {bucket!r}: {hint}"
