"""Records: one JSON object per image, written in small atomic shards, merged into one Parquet file.

The unit of work (and of resumption) is a batch of a fixed plan. A process writes a batch's files first, then
the batch's record shard (`records/batch-0000042.jsonl`, temp file + rename). A shard therefore means "this
batch is finished", a missing shard means "do it again", and a kill at any moment loses at most the batches in
flight. `merge_shards` streams the shards in batch order into `records.parquet`, the same bytes whatever the
number of processes or interruptions.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserInputError
from .io import atomic_path

SHARD_GLOB = "batch-*.jsonl"


def shard_path(records_dir: Path, batch_index: int) -> Path:
    return Path(records_dir) / f"batch-{batch_index:07d}.jsonl"


def write_shard(records_dir: Path, batch_index: int, records: list[dict]) -> None:
    with atomic_path(shard_path(records_dir, batch_index)) as tmp:
        tmp.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


def done_batches(records_dir: Path) -> set[int]:
    """Indices of the batches whose shard exists."""
    return {int(path.stem.split("-")[1]) for path in Path(records_dir).glob(SHARD_GLOB)}


def iter_records(records_dir: Path):
    """Every record, in batch order."""
    for path in sorted(Path(records_dir).glob(SHARD_GLOB)):
        with path.open() as handle:
            for line in handle:
                yield json.loads(line)


def _record_groups(records_dir: Path, rows_per_group: int, schema=None):
    import pyarrow as pa

    buffer = []
    for record in iter_records(records_dir):
        buffer.append(record)
        if len(buffer) >= rows_per_group:
            yield pa.Table.from_pylist(buffer, schema=schema)
            buffer = []
    if buffer:
        yield pa.Table.from_pylist(buffer, schema=schema)


def merge_shards(records_dir: Path, out_file: Path, rows_per_group: int = 4096) -> int:
    """Stream all shards into one Parquet file (atomically). Two passes, so a column that is null in early
    records (no LoRA, no detection) still gets its real type; memory is bounded by `rows_per_group`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [table.schema for table in _record_groups(records_dir, rows_per_group)]
    if not schemas:
        raise UserInputError(f"{records_dir}: no record shards to merge")
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    schema = pa.schema(sorted(schema, key=lambda field: field.name))
    count = 0
    with atomic_path(out_file) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in _record_groups(records_dir, rows_per_group, schema):
            writer.write_table(table)
            count += table.num_rows
    return count


def check_plan(out_dir: Path, plan: dict) -> None:
    """Record the plan of a fresh output directory; refuse to mix in another plan's output."""
    path = Path(out_dir) / "plan.json"
    if path.exists():
        existing = json.loads(path.read_text())
        changed = {key: (existing.get(key), value) for key, value in plan.items() if existing.get(key) != value}
        if changed:
            details = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise UserInputError(
                f"{out_dir} holds the output of a different plan ({details}). Re-run with the original settings "
                "to resume it, or choose a new --output_dir."
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plan, indent=2, sort_keys=True))
