-- What each agent last said about itself (its retained status message), and
-- readings quarantined for timestamps outside the sane window.

CREATE TABLE agent_status (
    tenant       text        NOT NULL,
    agent        text        NOT NULL,
    online       boolean     NOT NULL,
    version      text        NOT NULL,
    -- The agent's clock when it wrote the status; received_at is ours.
    reported_at  timestamptz,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- The whole status: buffer depth, dropped and rejected counts, clock, faults.
    status       jsonb       NOT NULL,
    PRIMARY KEY (tenant, agent)
);

-- Samples, windows and events whose time was too far in the future (or, when
-- ingest.max_past_days is set, too far in the past) when they arrived. They
-- are settled with their batch, so a resend does not add them again.
CREATE TABLE ingest_quarantine (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz      NOT NULL DEFAULT now(),
    tenant       text             NOT NULL,
    agent        text             NOT NULL,
    kind         text             NOT NULL,  -- sample | window | event
    series       text             NOT NULL,  -- the series key, or source/kind of an event
    ts           timestamptz      NOT NULL,
    value        double precision,           -- the sample's value, a window's sum
    reason       text             NOT NULL   -- future | past
);
CREATE INDEX ingest_quarantine_tenant ON ingest_quarantine (tenant, received_at);
