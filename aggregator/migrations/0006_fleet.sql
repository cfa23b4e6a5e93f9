-- The fleet: places (a tree per tenant), customers (a device's owner), the
-- devices seen at ingest or registered by hand, and their liveness.

-- A tenant's places, any depth: corporate -> region -> district -> location.
-- `path` is the ids from the root, each followed by '/': '/corp/west/s17/'.
-- A subtree is `starts_with(path, '/corp/west/')` (not LIKE: '_' is a
-- LIKE wildcard and may be in an id); moving a place rewrites its
-- subtree's paths in one statement.
CREATE TABLE places (
    tenant      text        NOT NULL,
    place       text        NOT NULL,
    parent      text,
    name        text        NOT NULL,
    path        text        NOT NULL,
    -- Free level name shown to people: corporate, region, district, location.
    kind        text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, place),
    FOREIGN KEY (tenant, parent) REFERENCES places (tenant, place),
    CHECK (place ~ '^[A-Za-z0-9._-]{1,64}$')
);
CREATE INDEX places_path ON places (tenant, path text_pattern_ops);

-- Who owns devices: a franchisee, an IoT company's end customer, a patient.
CREATE TABLE customers (
    tenant      text        NOT NULL,
    customer    text        NOT NULL,
    name        text        NOT NULL,
    -- Contacts the alerts issue notifies ("email the customer").
    email       text,
    phone       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer),
    CHECK (customer ~ '^[A-Za-z0-9._-]{1,64}$')
);

ALTER TABLE agents ADD COLUMN place text, ADD COLUMN customer text,
    ADD FOREIGN KEY (tenant, place) REFERENCES places (tenant, place),
    ADD FOREIGN KEY (tenant, customer) REFERENCES customers (tenant, customer);

-- Every device of a tenant. Registered when its first series is, or by
-- hand (API, CLI, CSV) before it reports. `state` is set by the liveness
-- sweep: never_reported, online, offline, delayed (its gateway holds an
-- unsent backlog that may hold its readings), unknown (its gateway is
-- offline).
CREATE TABLE devices (
    tenant            text        NOT NULL,
    device            text        NOT NULL,
    -- The agent that delivered its latest reading.
    agent             text,
    place             text,
    customer          text,
    latitude          double precision CHECK (latitude BETWEEN -90 AND 90),
    longitude         double precision CHECK (longitude BETWEEN -180 AND 180),
    model             text,
    firmware          text,
    labels            jsonb       NOT NULL DEFAULT '{}',
    -- Silence allowed before offline, set by hand; NULL: the model's, the
    -- learned one, or the default (fleet.* in the config).
    expected_interval_secs integer CHECK (expected_interval_secs > 0),
    -- The reporting cadence seen at ingest (median gap between readings).
    learned_cadence_ms bigint,
    first_reading     timestamptz,
    last_reading      timestamptz,
    last_arrival      timestamptz,
    state             text        NOT NULL DEFAULT 'never_reported',
    state_since       timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, device),
    FOREIGN KEY (tenant, place) REFERENCES places (tenant, place),
    FOREIGN KEY (tenant, customer) REFERENCES customers (tenant, customer),
    CHECK (state IN ('never_reported', 'online', 'offline', 'delayed', 'unknown'))
);
CREATE INDEX devices_by_place ON devices (tenant, place);
CREATE INDEX devices_by_customer ON devices (tenant, customer);
CREATE INDEX devices_by_agent ON devices (tenant, agent);

-- Every state change, with its time.
CREATE TABLE device_transitions (
    tenant      text        NOT NULL,
    device      text        NOT NULL,
    at          timestamptz NOT NULL,
    from_state  text        NOT NULL,
    to_state    text        NOT NULL,
    -- What the sweep saw: the last reading, the interval, the gateway.
    detail      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX device_transitions_by_device ON device_transitions (tenant, device, at);

-- The devices of the series stored so far.
INSERT INTO devices (tenant, device)
SELECT DISTINCT tenant, device FROM series
ON CONFLICT DO NOTHING;

-- Their first and last readings, from the daily rollups.
UPDATE devices d SET first_reading = r.first, last_reading = r.last, last_arrival = r.last
FROM (
    SELECT s.tenant, s.device, min(r.first_ts) AS first, max(r.last_ts) AS last
    FROM rollup_daily r JOIN series s ON s.id = r.series_id
    GROUP BY s.tenant, s.device
) r
WHERE d.tenant = r.tenant AND d.device = r.device;
