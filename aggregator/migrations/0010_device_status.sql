-- What devices say of themselves (an agent's `device.status` events: a
-- status topic or a last will), and a devices table the sweep can update
-- in place.

ALTER TABLE devices
    ADD COLUMN reported_online boolean,
    ADD COLUMN reported_at     timestamptz,
    -- [{"code": "17", "message": "motor overheat"}]: the codes it last
    -- reported, with the agent's text for each (a message is null when the
    -- agent has none). NULL: it never said.
    ADD COLUMN errors          jsonb;

-- A sweep rewrites every device's state when a whole fleet changes. The
-- state columns are not indexed, so with room on each page every such
-- update stays on its page and touches no index (a HOT update); a full
-- page sends each new row version to another page and adds an entry to
-- every index. Pages written from now on keep half free.
ALTER TABLE devices SET (fillfactor = 50);

-- What the sweep saw, as columns (building a JSON object for each of
-- 100,000 changes cost a tenth of the sweep); `detail` stays for rows
-- written before.
ALTER TABLE device_transitions
    ALTER COLUMN detail DROP NOT NULL,
    ALTER COLUMN detail DROP DEFAULT,
    ADD COLUMN last_reading   timestamptz,
    ADD COLUMN deadline       timestamptz,
    ADD COLUMN gateway_online boolean,
    ADD COLUMN gateway_heard  timestamptz,
    ADD COLUMN gateway_held   numeric,
    ADD COLUMN reported       boolean;
