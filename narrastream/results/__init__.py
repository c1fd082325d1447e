"""Run directory layout, the record schema, atomic appends, resume and shard merge."""

from narrastream.results.records import Record, RecordStore, record_key
from narrastream.results.rundir import RunDir

__all__ = ["Record", "RecordStore", "RunDir", "record_key"]
