-- The audit log: one row per API request that reads or changes data, or
-- logs in or out. Append-only (a trigger refuses UPDATE, DELETE and
-- TRUNCATE, except retention's own deletes of the oldest rows) and
-- hash-chained: each row's hash covers its fields and the previous row's
-- hash, so a changed, removed or inserted row breaks the chain.

CREATE TABLE audit_log (
    seq         bigint      PRIMARY KEY,
    at          timestamptz NOT NULL,
    -- user, token, bootstrap, anonymous
    actor_kind  text        NOT NULL,
    actor       text        NOT NULL,
    tenant      text,
    -- read, create, update, delete, login, logout
    action      text        NOT NULL,
    object      text        NOT NULL,
    scope       text        NOT NULL,
    client      text,
    user_agent  text,
    -- ok, denied (401, 403, 404, 429), refused (other 4xx), error (5xx)
    outcome     text        NOT NULL,
    status      integer     NOT NULL,
    prev_hash   text        NOT NULL,
    hash        text        NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant, at);

-- Where the chain starts once retention removed its oldest rows.
CREATE TABLE audit_anchor (
    id          integer     PRIMARY KEY CHECK (id = 1),
    seq         bigint      NOT NULL,
    prev_hash   text        NOT NULL,
    cut_at      timestamptz NOT NULL
);

CREATE FUNCTION dash_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('dash.audit_retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION dash_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION dash_audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
