-- Storage tiers: raw samples as per-series blocks, exact hourly and daily rollups.
-- Replaces the row-per-sample table; `samples` stays as a view with the same columns.

CREATE TABLE tenants (
    tenant     text PRIMARY KEY,
    -- IANA zone; daily buckets are this zone's days (23 and 25 hours across DST).
    time_zone  text NOT NULL DEFAULT 'UTC'
);

-- One row per series per batch per 30-minute span: offsets (µs after `bucket`)
-- and values as arrays, TOASTed with lz4.
CREATE TABLE raw_blocks (
    tenant     text        NOT NULL,
    series_id  bigint      NOT NULL,
    bucket     timestamptz NOT NULL,
    offsets    int4[]      NOT NULL,
    vals       float8[]    NOT NULL,
    CHECK (cardinality(offsets) = cardinality(vals))
);
ALTER TABLE raw_blocks ALTER COLUMN offsets SET COMPRESSION lz4;
ALTER TABLE raw_blocks ALTER COLUMN vals SET COMPRESSION lz4;
CREATE INDEX raw_blocks_series_bucket ON raw_blocks (series_id, bucket);

DROP TABLE samples;
CREATE VIEW samples AS
    SELECT b.tenant, b.series_id, b.bucket + u.off * interval '1 microsecond' AS ts, u.value
    FROM raw_blocks b, LATERAL unnest(b.offsets, b.vals) AS u(off, value);

-- first/last: the value at the earliest/latest time; equal times break by value,
-- so a rollup never depends on arrival order.
CREATE TABLE rollup_hourly (
    tenant     text             NOT NULL,
    series_id  bigint           NOT NULL,
    bucket     timestamptz      NOT NULL,
    count      bigint           NOT NULL,
    sum        double precision NOT NULL,
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    first      double precision NOT NULL,
    first_ts   timestamptz      NOT NULL,
    last       double precision NOT NULL,
    last_ts    timestamptz      NOT NULL,
    PRIMARY KEY (series_id, bucket)
);

CREATE TABLE rollup_daily (LIKE rollup_hourly INCLUDING ALL);
