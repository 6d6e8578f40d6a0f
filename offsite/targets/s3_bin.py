"""The `s3` target's bin (SPEC section 8): `<prefix>/<folder>/.offsite/deleted/<day>/<path>`.

S3 has no rename: a file goes into the bin, and back, as a server-side copy and then a
delete of the original, so a failure between the two leaves both copies, never none. A
restored file gets the location's object options again (storage class, object lock). Every
change to the bin counts as a change of the agent folder (Folder.changed), so a listing of
the job folder made before it no longer answers bin_list().
"""
from __future__ import annotations

import builtins

from ..errors import PermanentError
from .base import Binned, Target, binned, binned_name, check_day, check_relpath
from .s3_bucket import Bucket, Folder


class S3Bin(Target):
    """The bin's half of the Target contract, for S3Target; raises what Bucket requests raise
    (TransientError, PermanentError), and PermanentError for an unsafe path or day."""

    store: Bucket
    root: str  # the job folder's prefix, "<prefix>/<folder>/"
    bin: str  # the bin's prefix, under the agent folder
    known: Folder  # what the process knows of the job folder

    def listed(self, prefix: str) -> builtins.list[dict] | None:
        """The objects under `prefix` as the last listing saw them, if still true (S3Target)."""
        return None

    def _binned(self, relpath: str, day: str, version: int = 1) -> str:
        return f"{self.bin}{check_day(day)}/{binned_name(check_relpath(relpath), version)}"

    def to_bin(self, relpath: str, day: str) -> None:
        key, dest = self.root + check_relpath(relpath), self._binned(relpath, day)
        head = self.store.head(key)
        if head is None:
            return  # gone already
        version = 1
        while self.store.head(dest) is not None:
            version += 1  # the day's earlier copies stay; this one goes beside them
            dest = self._binned(relpath, day, version)
        self.known.changed(self.bin)
        self.store.copy(key, dest, head["ContentLength"])
        self.store.delete(key, relpath)

    def bin_list(self) -> builtins.list[Binned]:
        out = []
        listed = self.listed(self.bin)
        for o in listed if listed is not None else self.store.keys(self.bin):
            day, _, path = o["Key"][len(self.bin):].partition("/")
            if path and not path.endswith("/"):
                out.append(binned(day, path, o["Size"]))
        return out

    def from_bin(self, relpath: str, day: str, version: int = 1) -> None:
        src, key = self._binned(relpath, day, version), self.root + check_relpath(relpath)
        head = self.store.head(src)
        if head is None:
            raise PermanentError(f"the bin holds no {relpath} of {day}")
        if self.store.head(key) is not None:
            raise PermanentError(f"{relpath} is on the target already: it is not overwritten")
        self.known.changed(self.bin)
        self.store.copy(src, key, head["ContentLength"], **self.store.object_extra())
        self.store.delete(src)

    def purge_bin(self, day: str) -> None:
        keys = [o["Key"] for o in self.store.keys(f"{self.bin}{check_day(day)}/")]
        self.known.changed(self.bin)
        for i in range(0, len(keys), 1000):
            r = self.store.call(f"the bin's {day}", self.store.client.delete_objects, Bucket=self.store.name,
                                Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            if r and r.get("Errors"):
                e = r["Errors"][0]
                raise PermanentError(f"cannot remove {e.get('Key')} from the bin in bucket {self.store.name}: "
                                     f"{e.get('Code')}")
