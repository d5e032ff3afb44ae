-- Devices known to the pipeline. Rows are created by the PostgreSQL sink when a
-- device is first heard (auto_register) or through the API.
CREATE TABLE devices (
    id              text PRIMARY KEY
                    CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    name            text,
    protocol        text NOT NULL,
    application_id  text,
    api_key_hash    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz,
    last_message_id text,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX devices_application_id_idx ON devices (application_id);
CREATE INDEX devices_last_seen_idx ON devices (last_seen DESC);
