-- Device profiles: per metric its unit and valid range. The validate agent
-- drops out-of-range values to the DLQ while the rest of the reading passes.
CREATE TABLE device_profiles (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    name        text NOT NULL,
    -- {"temperature": {"unit": "°C", "min": -40, "max": 125}, ...}
    metrics     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metrics) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE devices ADD COLUMN profile_id text REFERENCES device_profiles (id) ON DELETE SET NULL;
CREATE INDEX devices_profile_id_idx ON devices (profile_id);
