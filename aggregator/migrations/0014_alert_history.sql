-- Alerts, second step: every state change of an instance, for the API's
-- history and for whoever asks "when did this start paging". An instance
-- that was normal all along is no longer rewritten each evaluation, so
-- alert_instances holds what has been other than normal.

CREATE TABLE alert_history (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    rule         text        NOT NULL,
    fingerprint  text        NOT NULL,
    from_state   text        NOT NULL,
    to_state     text        NOT NULL,
    value        double precision,
    summary      text        NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX alert_history_instance ON alert_history (tenant, rule, fingerprint, at);
CREATE INDEX alert_history_tenant_at ON alert_history (tenant, at);
