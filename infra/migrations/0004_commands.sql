-- Commands back to devices (DESIGN sections 6 and 7) and the history of their statuses.
-- A command only moves forward: queued -> sent -> delivered -> acked | failed, or
-- expired once expires_at passed without a final status. Writers change `status`
-- with a conditional UPDATE on the current one, so replays are no-ops.
-- No foreign key to devices: the command log outlives a deleted device.

CREATE TABLE commands (
    id              uuid PRIMARY KEY,
    device_id       text NOT NULL CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    name            text NOT NULL CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.:-]{0,63}$'),
    params          jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(params) = 'object'),
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'sent', 'delivered', 'acked', 'failed', 'expired')),
    detail          text NOT NULL DEFAULT '',
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    requested_by    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at >= created_at)
);

-- The same Idempotency-Key for the same device names one command, never a second one.
CREATE UNIQUE INDEX commands_idempotency_idx ON commands (device_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX commands_device_idx ON commands (device_id, created_at DESC);
-- What the expiry timer and the HTTP poll look at: commands without a final status.
CREATE INDEX commands_open_idx ON commands (expires_at)
    WHERE status IN ('queued', 'sent', 'delivered');

CREATE TABLE command_status_history (
    id          bigserial PRIMARY KEY,
    command_id  uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    status      text NOT NULL
                CHECK (status IN ('queued', 'sent', 'delivered', 'acked', 'failed', 'expired')),
    at          timestamptz NOT NULL,
    detail      text NOT NULL DEFAULT '',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (command_id, status)
);
