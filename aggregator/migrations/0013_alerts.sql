-- Alerts: each rule's instances (one per group it watches) with their
-- state and what was last notified, the outbox of notifications written
-- in the same transaction as the state change that causes them, and the
-- lease that lets one aggregator evaluate at a time.

CREATE TABLE alert_instances (
    tenant        text        NOT NULL,
    rule          text        NOT NULL,
    -- A stable hash of the rule and the instance's labels.
    fingerprint   text        NOT NULL,
    labels        jsonb       NOT NULL,
    state         text        NOT NULL CHECK (state IN ('normal', 'pending', 'firing', 'recovering')),
    since         timestamptz NOT NULL,
    value         double precision,
    evaluated_at  timestamptz NOT NULL,
    -- The last notice sent for it: a resolve is owed only after a trigger.
    notified      text        NOT NULL DEFAULT 'none' CHECK (notified IN ('none', 'trigger', 'resolve')),
    PRIMARY KEY (tenant, rule, fingerprint)
);

CREATE TABLE alert_outbox (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    rule         text        NOT NULL,
    fingerprint  text        NOT NULL,
    event        text        NOT NULL CHECK (event IN ('trigger', 'resolve')),
    -- The contact point it goes to (a name from the alerts config).
    contact      text        NOT NULL,
    -- What is sent: rule, labels, value, severity, and the dedup key.
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    dead_at      timestamptz,
    last_error   text
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_at) WHERE sent_at IS NULL AND dead_at IS NULL;

-- One evaluator at a time: the holder renews before `expires_at`; a new
-- holder raises `fence`, and a write under an older fence is refused.
CREATE TABLE alert_lease (
    id          integer     PRIMARY KEY CHECK (id = 1),
    holder      text        NOT NULL,
    fence       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL
);
