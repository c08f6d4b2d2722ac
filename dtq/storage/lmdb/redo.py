"""What a batch changed, as the log's record: every put and delete, in order, and their replay.

The record is physical (table, key, value) rather than the operation: operations read the
clock and make ids, a replay must not. Replayed in order on the snapshot the records follow,
they rebuild exactly the state that was committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lmdb
import msgspec

__all__ = ["Change", "RecordingTxn", "decode_changes", "encode_changes", "replay"]

# (table index, key, value); value None: the key was deleted
Change = tuple[int, bytes, bytes | None]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Change])


class RecordingTxn:
    """An LMDB write transaction that notes each change it makes in `changes`.

    Offers the part of `lmdb.Transaction` the backend writes through: get, put, delete and a
    cursor that is only read from.
    """

    __slots__ = ("_index", "_txn", "changes")

    def __init__(self, txn: lmdb.Transaction, index: dict[Any, int]) -> None:
        self._txn = txn
        self._index = index  # db handle -> its table's number
        self.changes: list[Change] = []

    def get(self, key: bytes, default: Any = None, db: Any = None) -> Any:
        return self._txn.get(key, default, db=db)

    def put(self, key: bytes, value: bytes, db: Any) -> bool:
        self.changes.append((self._index[db], key, value))
        return bool(self._txn.put(key, value, db=db))

    def delete(self, key: bytes, db: Any) -> bool:
        deleted = bool(self._txn.delete(key, db=db))
        if deleted:
            self.changes.append((self._index[db], key, None))
        return deleted

    def cursor(self, db: Any) -> lmdb.Cursor:
        """For reading only: a change through it would escape the record."""
        return self._txn.cursor(db=db)


def encode_changes(changes: list[Change]) -> bytes:
    return _encoder.encode(changes)


def decode_changes(payload: bytes) -> list[Change]:
    return _decoder.decode(payload)


def replay(txn: lmdb.Transaction, tables: Sequence[Any], changes: list[Change]) -> None:
    """Apply one record's changes in `txn` (`tables[i]` is the handle of table number i)."""
    for index, key, value in changes:
        if value is None:
            txn.delete(key, db=tables[index])
        else:
            txn.put(key, value, db=tables[index])
