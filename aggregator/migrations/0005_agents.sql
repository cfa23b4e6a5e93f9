-- The registry of agents: who may connect and publish, proven by a client
-- certificate (its SHA-256) or a token (its SHA-256; tokens are random, 256
-- bits). Revoked agents cannot connect, and their batches are not stored.

CREATE TABLE agents (
    tenant          text        NOT NULL,
    agent           text        NOT NULL,
    -- SHA-256 of the client certificate's DER, hex; NULL: no certificate.
    cert_sha256     text        UNIQUE,
    -- The certificate's serial number, hex, for the revocation list.
    cert_serial     text,
    cert_not_after  timestamptz,
    -- SHA-256 of the token, hex; NULL: no token login.
    token_sha256    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    -- The last time the agent connected through the aggregator's broker.
    last_seen       timestamptz,
    PRIMARY KEY (tenant, agent)
);
