-- The data path: series registry, a plain samples table, and the dedupe ledger.
-- Every table carries the tenant. The storage tiers replace `samples` later;
-- the ledger and the series registry stay.

CREATE TABLE series (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant      text        NOT NULL,
    device      text        NOT NULL,
    metric      text        NOT NULL,
    tags        jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, device, metric, tags)
);

CREATE TABLE samples (
    tenant     text             NOT NULL,
    series_id  bigint           NOT NULL,
    ts         timestamptz      NOT NULL,
    value      double precision NOT NULL
);
CREATE INDEX samples_series_ts ON samples (series_id, ts);

-- One row per (agent stream, incarnation). Every seq <= committed_through is
-- settled; `above` holds settled seqs beyond a gap (bounded by the agent's
-- in-flight window, because the agent reports its floor with every batch).
CREATE TABLE ingest_ledger (
    tenant            text        NOT NULL,
    agent             text        NOT NULL,
    stream            text        NOT NULL,
    incarnation       bigint      NOT NULL,
    committed_through bigint      NOT NULL DEFAULT 0,
    above             bigint[]    NOT NULL DEFAULT '{}',
    batches           bigint      NOT NULL DEFAULT 0,
    samples           bigint      NOT NULL DEFAULT 0,
    duplicates        bigint      NOT NULL DEFAULT 0,
    first_seen        timestamptz NOT NULL DEFAULT now(),
    last_commit       timestamptz,
    PRIMARY KEY (tenant, agent, stream, incarnation)
);

-- Payloads that could not be stored, kept for an operator to inspect.
CREATE TABLE ingest_rejections (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    tenant       text        NOT NULL,
    agent        text        NOT NULL,
    stream       text,
    seq          bigint,
    reason       text        NOT NULL,
    payload      bytea       NOT NULL
);
