"""Where checkpoints and input logs live: a directory on a `pyarrow.fs` filesystem.

Layout under the root (a local directory, or a URI such as `s3://bucket/prefix`):

    checkpoints/{id:010d}/{stage}-{replica}.msgpack   one replica's snapshot (msgpack)
    checkpoints/{id:010d}/_COMPLETE                   written last, once every stage acked
    logs/{stage}-{replica}/{epoch:010d}-{part:04d}.arrow
        the inputs a replica took after barrier `epoch` (Arrow IPC stream; each batch's
        custom metadata names its sender); `part` counts incarnations of the replica
    faults/{name}                                     one-shot fault injections already fired

A snapshot file appears atomically (written beside, then moved); a checkpoint counts only
once its `_COMPLETE` marker exists, so a crash in the middle of one leaves the previous
completed checkpoint as the one to restore. `delete_before(id)` drops older checkpoints and
the log segments they made unnecessary.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

import msgpack
import pyarrow as pa
import pyarrow.fs as pafs

_COMPLETE = "_COMPLETE"
_SEGMENT = re.compile(r"^(\d{10})-(\d{4})\.arrow$")


def replica_name(stage: str, replica: int) -> str:
    """A replica's file-name key (stage names have no '/')."""
    return f"{stage}-{replica}"


@dataclass(slots=True)
class LogEntry:
    """One logged input batch."""

    epoch: int  # the id of the last barrier its sender had delivered before it
    sender: str  # "stage/replica" of the upstream replica, or "ingress"
    batch: pa.RecordBatch


class CheckpointStore:
    """Snapshots, completion markers and input logs of one deployed graph."""

    def __init__(self, uri: str):
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"checkpoint_dir must be a non-empty path or URI, got {uri!r}")
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri
        self.fs.create_dir(self.root, recursive=True)

    # -- paths ------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _checkpoint_dir(self, checkpoint_id: int) -> str:
        return self._path("checkpoints", f"{checkpoint_id:010d}")

    def _log_dir(self, name: str) -> str:
        return self._path("logs", name)

    def _list(self, path: str) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    # -- snapshots --------------------------------------------------------------------------
    def write_snapshot(self, checkpoint_id: int, name: str, state: dict) -> None:
        """Store one replica's state for checkpoint `checkpoint_id` (atomically)."""
        directory = self._checkpoint_dir(checkpoint_id)
        self.fs.create_dir(directory, recursive=True)
        self._write_atomic(f"{directory}/{name}.msgpack", msgpack.packb(state, use_bin_type=True))

    def read_snapshot(self, checkpoint_id: int, name: str) -> dict | None:
        """The replica's state in checkpoint `checkpoint_id`, or None when it has none."""
        path = f"{self._checkpoint_dir(checkpoint_id)}/{name}.msgpack"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(path) as f:
            return msgpack.unpackb(f.read(), raw=False, strict_map_key=False)

    def mark_complete(self, checkpoint_id: int) -> None:
        directory = self._checkpoint_dir(checkpoint_id)
        self.fs.create_dir(directory, recursive=True)
        self._write_atomic(f"{directory}/{_COMPLETE}", b"")

    def checkpoints(self) -> list[tuple[int, bool]]:
        """(id, complete) of every checkpoint directory, oldest first."""
        out = []
        for info in self._list(self._path("checkpoints")):
            if info.type == pafs.FileType.Directory and info.base_name.isdigit():
                complete = self.fs.get_file_info(f"{info.path}/{_COMPLETE}").type == pafs.FileType.File
                out.append((int(info.base_name), complete))
        return sorted(out)

    def latest_complete(self) -> int:
        """The id of the newest completed checkpoint; 0 (the empty initial state) when none."""
        return max((cid for cid, done in self.checkpoints() if done), default=0)

    # -- input logs -------------------------------------------------------------------------
    def log_writer(self, name: str, part: int) -> "InputLog":
        return InputLog(self, name, part)

    def log_parts(self, name: str) -> list[tuple[int, int, str]]:
        """(epoch, part, path) of a replica's log files, in replay order."""
        out = []
        for info in self._list(self._log_dir(name)):
            m = _SEGMENT.match(info.base_name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), info.path))
        return sorted(out)

    def next_part(self, name: str) -> int:
        """The part number a new incarnation of the replica writes under."""
        return max((part for _, part, _ in self.log_parts(name)), default=-1) + 1

    def read_log(self, name: str, from_epoch: int) -> list[LogEntry]:
        """Every input the replica logged after barrier `from_epoch`, in the order it took
        them per sender (epoch by epoch, incarnation by incarnation). A batch cut short by a
        crash ends its file."""
        import pyarrow.ipc as ipc

        entries = []
        parts = [(e, p, path) for e, p, path in self.log_parts(name) if e >= from_epoch]
        for epoch, _, path in sorted(parts, key=lambda t: (t[1], t[0])):  # incarnation, then epoch
            with self.fs.open_input_stream(path) as f:
                data = f.read()
            if not data:
                continue
            try:
                reader = ipc.open_stream(pa.py_buffer(data))
            except (pa.ArrowInvalid, OSError):
                continue  # the crash came before the schema was written
            while True:
                try:
                    batch, meta = reader.read_next_batch_with_custom_metadata()
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError):
                    break  # torn tail
                sender = meta.get(b"sender", b"").decode() if meta is not None else ""
                entries.append(LogEntry(epoch, sender, batch))
        return entries

    def delete_before(self, checkpoint_id: int) -> None:
        """Drop checkpoints older than `checkpoint_id` (complete or not) and log segments of
        epochs before it: recovery never reads them again."""
        for cid, _ in self.checkpoints():
            if cid < checkpoint_id:
                self.fs.delete_dir(self._checkpoint_dir(cid))
        for info in self._list(self._path("logs")):
            if info.type != pafs.FileType.Directory:
                continue
            for epoch, _, path in self.log_parts(info.base_name):
                if epoch < checkpoint_id:
                    self.fs.delete_file(path)

    # -- one-shot fault markers -------------------------------------------------------------
    def fire_once(self, key: str) -> bool:
        """True the first time `key` is asked for (a fault that must strike once across restarts)."""
        path = self._path("faults", key)
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        self.fs.create_dir(self._path("faults"), recursive=True)
        self._write_atomic(path, b"")
        return True

    def delete_all(self) -> None:
        self.fs.delete_dir_contents(self.root, missing_dir_ok=True)
        if "://" not in self.uri:
            self.fs.delete_dir(self.root)

    def files(self) -> list[str]:
        """Every file under the root, relative to it (for tests and inspection)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        base = self.root.rstrip("/") + "/"
        return sorted(i.path[len(base):] for i in infos if i.type == pafs.FileType.File)


class InputLog:
    """Appends a replica's input batches to its log, one Arrow IPC stream per epoch. Each
    write is flushed before it returns, so an input acknowledged to its sender survives the
    replica's crash (a SIGKILL leaves the bytes in the OS; on object stores a segment is
    visible once closed)."""

    def __init__(self, store: CheckpointStore, name: str, part: int):
        self.store = store
        self.name = name
        self.part = part
        self.writers: dict[int, tuple] = {}  # epoch -> (output stream, ipc writer, schema)
        self.num_batches = 0  # batches written since the last `close_before`

    def append(self, epoch: int, sender: str, batch: pa.RecordBatch) -> None:
        import pyarrow.ipc as ipc

        entry = self.writers.get(epoch)
        if entry is not None and not entry[2].equals(batch.schema):
            batch = batch.cast(entry[2]) if batch.schema.names == entry[2].names else batch
        if entry is None:
            directory = self.store._log_dir(self.name)
            self.store.fs.create_dir(directory, recursive=True)
            stream = self.store.fs.open_output_stream(f"{directory}/{epoch:010d}-{self.part:04d}.arrow")
            entry = (stream, ipc.new_stream(stream, batch.schema), batch.schema)
            self.writers[epoch] = entry
        stream, writer, _ = entry
        writer.write_batch(batch, custom_metadata={"sender": sender})
        stream.flush()
        self.num_batches += 1

    def close_before(self, epoch: int) -> None:
        """Close the segments of epochs before `epoch` (a snapshot at `epoch` covers them)."""
        for e in [e for e in self.writers if e < epoch]:
            stream, writer, _ = self.writers.pop(e)
            writer.close()
            stream.close()
        self.num_batches = 0

    def close(self) -> None:
        self.close_before(1 << 62)
