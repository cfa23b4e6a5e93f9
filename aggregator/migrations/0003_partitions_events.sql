-- Time partitioning for retention, edge windows, and events.
--
-- raw_blocks and rollup_hourly are split by `bucket` so that retention drops
-- whole partitions instead of deleting rows. With the timescaledb extension
-- installed in this database (the aggregator installs it when the server
-- preloads it), they become hypertables and TimescaleDB creates chunks;
-- otherwise they are natively range-partitioned, and the aggregator creates
-- partitions ahead of time (dash_partition_for) and drops old ones
-- (dash_drop_partitions). The table names, columns and queries are the same
-- either way. rollup_daily stays one plain table (it is small and kept
-- forever by default).

DROP VIEW samples;
ALTER TABLE raw_blocks RENAME TO raw_blocks_0002;
ALTER INDEX raw_blocks_series_bucket RENAME TO raw_blocks_0002_series_bucket;
ALTER TABLE rollup_hourly RENAME TO rollup_hourly_0002;
ALTER INDEX rollup_hourly_pkey RENAME TO rollup_hourly_0002_pkey;

-- Width and alignment of the native partitions (weeks start on Monday).
CREATE TABLE dash_partitioning (
    parent  text        PRIMARY KEY,
    width   interval    NOT NULL,
    origin  timestamptz NOT NULL
);
INSERT INTO dash_partitioning VALUES
    ('raw_blocks',    interval '1 day',  '2000-01-03 00:00:00+00'),
    ('raw_windows',   interval '1 day',  '2000-01-03 00:00:00+00'),
    ('rollup_hourly', interval '7 days', '2000-01-03 00:00:00+00');

-- Returns the partition of `parent` holding `at`, creating it if missing.
-- CREATE + ATTACH (rather than PARTITION OF) takes only a SHARE UPDATE
-- EXCLUSIVE lock on the parent, so ingest and queries keep running.
CREATE FUNCTION dash_partition_for(parent text, at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    p    dash_partitioning;
    lo   timestamptz;
    name text;
BEGIN
    SELECT * INTO STRICT p FROM dash_partitioning d WHERE d.parent = dash_partition_for.parent;
    lo := date_bin(p.width, at, p.origin);
    name := format('%s_p%s', parent, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD'));
    IF to_regclass(name) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING ALL)', name, parent);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, name, lo, lo + p.width);
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL; -- another session created it meanwhile
        END;
    END IF;
    RETURN name;
END $$;

-- Drops the partitions of `parent` that end at or before `older_than`;
-- returns how many.
CREATE FUNCTION dash_drop_partitions(parent text, older_than timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r       record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS part,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS hi
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent::regclass
    LOOP
        IF r.hi <= older_than THEN
            EXECUTE format('DROP TABLE %s', r.part);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

DO $$
DECLARE
    hyper boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    split text := CASE WHEN hyper THEN '' ELSE ' PARTITION BY RANGE (bucket)' END;
BEGIN
    EXECUTE 'CREATE TABLE raw_blocks (LIKE raw_blocks_0002 INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMPRESSION)' || split;
    EXECUTE 'CREATE TABLE rollup_hourly (LIKE rollup_hourly_0002 INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMPRESSION,
                                         PRIMARY KEY (series_id, bucket))' || split;
    CREATE INDEX raw_blocks_series_bucket ON raw_blocks (series_id, bucket);
    -- Windows pre-aggregated by agents (count, sum, min, max, first, last over
    -- `width` seconds from `bucket`): the raw tier of series sent that way.
    EXECUTE 'CREATE TABLE raw_windows (
        tenant     text             NOT NULL,
        series_id  bigint           NOT NULL,
        bucket     timestamptz      NOT NULL,
        width      int4             NOT NULL,
        count      bigint           NOT NULL,
        sum        double precision NOT NULL,
        min        double precision NOT NULL,
        max        double precision NOT NULL,
        first      double precision NOT NULL,
        first_ts   timestamptz      NOT NULL,
        last       double precision NOT NULL,
        last_ts    timestamptz      NOT NULL)' || split;
    CREATE INDEX raw_windows_series_bucket ON raw_windows (series_id, bucket);
    IF hyper THEN
        PERFORM create_hypertable('raw_blocks', by_range('bucket', interval '1 day'));
        PERFORM create_hypertable('raw_windows', by_range('bucket', interval '1 day'));
        PERFORM create_hypertable('rollup_hourly', by_range('bucket', interval '7 days'));
    ELSE
        PERFORM dash_partition_for('raw_blocks', b) FROM (SELECT DISTINCT bucket FROM raw_blocks_0002) s(b);
        PERFORM dash_partition_for('rollup_hourly', b) FROM (SELECT DISTINCT bucket FROM rollup_hourly_0002) s(b);
    END IF;
END $$;

INSERT INTO raw_blocks SELECT * FROM raw_blocks_0002;
INSERT INTO rollup_hourly SELECT * FROM rollup_hourly_0002;
DROP TABLE raw_blocks_0002;
DROP TABLE rollup_hourly_0002;

CREATE VIEW samples AS
    SELECT b.tenant, b.series_id, b.bucket + u.off * interval '1 microsecond' AS ts, u.value
    FROM raw_blocks b, LATERAL unnest(b.offsets, b.vals) AS u(off, value);

-- Non-numeric records: POS transactions, device error codes. Stored exactly
-- once through the same batch ledger as samples.
CREATE TABLE events (
    tenant  text        NOT NULL,
    agent   text        NOT NULL,
    source  text        NOT NULL,
    ts      timestamptz NOT NULL,
    kind    text        NOT NULL,
    body    jsonb       NOT NULL
);
CREATE INDEX events_tenant_ts ON events (tenant, ts);
CREATE INDEX events_tenant_kind_ts ON events (tenant, kind, ts);
