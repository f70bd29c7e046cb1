"""The lens database's tables (SQLAlchemy Core) and the marker that tells our databases from other tools'.

`runs` 1-n `samples` 1-n `activations`. A sample row is written in the same transaction as all of its
activations, so the presence of a sample row means the sample is complete (that is what resume relies on).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
)
from sqlalchemy.exc import DBAPIError

from coglens.lens.store.errors import LensDatabaseError
from coglens.lens.store.formats import VLMLENS_FORMAT

SCHEMA_VERSION = 1
RUN_STATUSES = ("running", "finished", "failed", "interrupted")

# SQLite only auto-increments an `INTEGER PRIMARY KEY`; PostgreSQL gets 64-bit ids for long-lived databases.
Id = BigInteger().with_variant(Integer(), "sqlite")

marker_metadata = MetaData()
schema_marker = Table(
    "coglens_schema",
    marker_metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


def runs_table(name: str, tables: MetaData) -> Table:
    """A table of runs; the CogLens format and the VLM-Lens writer's bookkeeping share its columns."""
    return Table(
        name,
        tables,
        Column("id", Id, primary_key=True),
        Column("name", Text, nullable=False, unique=True),
        Column("config", Text),  # the config exactly as given (YAML/JSON text)
        Column("model_path", Text),
        Column("model_config_hash", String(128)),
        Column("architecture", Text),
        Column("coglens_version", String(64)),
        Column("torch_version", String(64)),
        Column("started_at", DateTime(timezone=True), nullable=False),
        Column("finished_at", DateTime(timezone=True)),
        Column("status", String(16), nullable=False),
        Column("error", Text),
        CheckConstraint(f"status IN {RUN_STATUSES!r}", name=f"ck_{name}_status"),
    )


metadata = MetaData()
runs = runs_table("runs", metadata)

samples = Table(
    "samples",
    metadata,
    Column("id", Id, primary_key=True),
    Column("run_id", Id, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("sample_key", Text, nullable=False),
    Column("image_path", Text),
    Column("image_sha256", String(64)),
    Column("prompt", Text),
    Column("label", Text),
    Column("dataset_row_id", Text),
    Column("input_ids", LargeBinary),  # int32 little-endian
    Column("token_type_ids", LargeBinary),  # uint8, 1 = vision token
    Column("num_tokens", Integer),
    Column("num_image_tokens", Integer),
    Column("generated_text", Text),
    Column("extra", JSON),
    Column("written_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("run_id", "sample_key", name="uq_samples_run_key"),
    Index("ix_samples_run_label", "run_id", "label"),
)

activations = Table(
    "activations",
    metadata,
    Column("id", Id, primary_key=True),
    Column("run_id", Id, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("sample_id", Id, ForeignKey("samples.id", ondelete="CASCADE"), nullable=False),
    Column("module", Text, nullable=False),
    Column("io", String(8), nullable=False),
    Column("step", Integer, nullable=False),
    Column("selection", Text, nullable=False),
    Column("pooling", Text),
    Column("shape", JSON, nullable=False),
    Column("dtype", String(32), nullable=False),
    Column("data", LargeBinary, nullable=False),  # raw little-endian elements, see codec.py
    CheckConstraint("io IN ('output', 'input')", name="ck_activations_io"),
    # Its (run_id, sample_id) prefix also serves "everything of one sample".
    UniqueConstraint("run_id", "sample_id", "module", "io", "step", name="uq_activations_row"),
    Index("ix_activations_run_module", "run_id", "module", "io", "step", "sample_id"),
)


def utc_now() -> datetime:
    """What the tables' timestamp columns hold: an aware UTC datetime."""
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """Timezone-aware UTC; SQLite hands back the naive UTC datetimes it was given."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def _read_marker(sql_engine: Engine) -> dict[str, str]:
    with sql_engine.connect() as conn:
        return {key: value for key, value in conn.execute(select(schema_marker.c.key, schema_marker.c.value))}


def prepare_schema(
    sql_engine: Engine,
    database: str,
    *,
    fmt: str,
    tables: MetaData,
    create: bool,
    accept_unmarked: Collection[str] = (),
) -> None:
    """Check that `sql_engine`'s database is a `fmt` database (creating the tables when `create` and it is new).

    `accept_unmarked`: table names of a database written by the original tool that `fmt` may adopt
    (the VLM-Lens writer appends to an existing VLM-Lens `tensors` table).
    """
    existing = set(inspect(sql_engine).get_table_names())
    ours = set(tables.tables)
    if schema_marker.name in existing:
        marker = _read_marker(sql_engine)
        found = marker.get("format")
        if found != fmt:
            hint = (
                "it was written with `output_format: vlm-lens`; read its `tensors` table as VLM-Lens documents"
                if found == VLMLENS_FORMAT
                else "open it with the reader for that format"
            )
            raise LensDatabaseError(f"{database} is a {found!r} database, not {fmt!r}: {hint}")
        if int(marker.get("version", 0)) > SCHEMA_VERSION:
            raise LensDatabaseError(
                f"{database} uses schema version {marker['version']}, newer than this CogLens "
                f"({SCHEMA_VERSION}); upgrade coglens to read it"
            )
    elif not create:
        if not existing:
            raise LensDatabaseError(f"{database} is empty: no lens run has been written to it")
        hint = (
            "it looks like a VLM-Lens database; its `tensors` rows are torch.save pickles that CogLens does not "
            "load; re-extract with `coglens lens` (output_format: coglens) to read it here"
            if "tensors" in existing
            else "check the path"
        )
        raise LensDatabaseError(
            f"{database} is not a CogLens lens database (tables: {', '.join(sorted(existing))}); {hint}"
        )
    else:
        foreign = existing - set(accept_unmarked) if sql_engine.dialect.name == "sqlite" else existing & ours
        if foreign:
            raise LensDatabaseError(
                f"{database} already holds tables of another tool ({', '.join(sorted(foreign))}); "
                "write the lens output to a new database file or an empty PostgreSQL database/schema"
            )
    if create:
        try:
            with sql_engine.begin() as conn:
                tables.create_all(conn)
                marker_metadata.create_all(conn)
                if schema_marker.name not in existing:
                    conn.execute(
                        schema_marker.insert(),
                        [{"key": "format", "value": fmt}, {"key": "version", "value": str(SCHEMA_VERSION)}],
                    )
        except DBAPIError:
            # Another process (another rank on a shared PostgreSQL) created the schema at the same moment.
            if _read_marker(sql_engine).get("format") != fmt:
                raise
