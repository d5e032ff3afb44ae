-- Alarm engine (DESIGN section 8): rules, alarms with their lifecycle, shelving,
-- and the history of every transition (also the outbox of AlarmEvents to Kafka).

CREATE TABLE alarm_rules (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- scope: a device, an application, or neither (every device)
    device_id               text CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    application_id          text CHECK (application_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    metric                  text,
    operator                text NOT NULL CHECK (operator IN ('>', '>=', '<', '<=', '==', '!=', 'stale')),
    threshold               double precision,
    deadband                double precision NOT NULL DEFAULT 0 CHECK (deadband >= 0),
    -- on-delay; for 'stale' the silence that raises the alarm
    for_seconds             double precision NOT NULL DEFAULT 0 CHECK (for_seconds >= 0),
    off_delay_seconds       double precision NOT NULL DEFAULT 0 CHECK (off_delay_seconds >= 0),
    severity                text NOT NULL DEFAULT 'major'
                            CHECK (severity IN ('critical', 'major', 'minor', 'warning', 'info')),
    enabled                 boolean NOT NULL DEFAULT true,
    notify_emails           text[] NOT NULL DEFAULT '{}',
    notify_webhooks         text[] NOT NULL DEFAULT '{}',
    notify_throttle_seconds double precision NOT NULL DEFAULT 300 CHECK (notify_throttle_seconds >= 0),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    -- rules are soft-deleted: their alarms keep pointing at them
    deleted_at              timestamptz,
    CHECK (device_id IS NULL OR application_id IS NULL),
    CHECK (operator = 'stale' OR (metric IS NOT NULL AND threshold IS NOT NULL)),
    CHECK (operator <> 'stale' OR for_seconds > 0)
);

CREATE INDEX alarm_rules_updated_idx ON alarm_rules (updated_at);

CREATE TABLE alarms (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_id         uuid NOT NULL REFERENCES alarm_rules (id),
    device_id       text NOT NULL,
    metric          text,
    state           text NOT NULL
                    CHECK (state IN ('active_unacked', 'active_acked', 'cleared_unacked', 'cleared_acked')),
    severity        text NOT NULL,
    value           double precision,
    message         text NOT NULL DEFAULT '',
    raised_at       timestamptz NOT NULL DEFAULT now(),
    -- device time of the reading that raised / cleared it: a replayed reading at or
    -- before these times cannot cause the same transition again
    raised_ts       timestamptz,
    acked_at        timestamptz,
    acked_by        text,
    cleared_at      timestamptz,
    cleared_by      text,
    cleared_ts      timestamptz,
    clear_value     double precision,
    shelved_until   timestamptz,
    shelved_by      text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One active alarm per (rule, device): flapping raises one alarm, not a storm.
CREATE UNIQUE INDEX alarms_one_active_idx ON alarms (rule_id, device_id)
    WHERE state IN ('active_unacked', 'active_acked');
CREATE INDEX alarms_rule_device_idx ON alarms (rule_id, device_id, raised_at DESC);
CREATE INDEX alarms_device_idx ON alarms (device_id, raised_at DESC);
CREATE INDEX alarms_state_idx ON alarms (state, raised_at DESC);

-- Suppression of a (rule, device) until a time; set through an alarm's shelve route.
CREATE TABLE alarm_shelves (
    rule_id         uuid NOT NULL REFERENCES alarm_rules (id),
    device_id       text NOT NULL,
    shelved_until   timestamptz NOT NULL,
    shelved_by      text,
    PRIMARY KEY (rule_id, device_id)
);

CREATE TABLE alarm_events (
    id              bigserial PRIMARY KEY,
    alarm_id        uuid NOT NULL REFERENCES alarms (id),
    rule_id         uuid NOT NULL,
    device_id       text NOT NULL,
    event           text NOT NULL
                    CHECK (event IN ('raised', 'acknowledged', 'cleared', 'shelved', 'unshelved')),
    state           text NOT NULL,
    severity        text NOT NULL,
    metric          text,
    value           double precision,
    at              timestamptz NOT NULL DEFAULT now(),
    by              text,
    message         text NOT NULL DEFAULT '',
    -- set once Kafka acknowledged the AlarmEvent; unset rows are relayed later
    published_at    timestamptz
);

-- Each alarm is raised, acknowledged and cleared at most once.
CREATE UNIQUE INDEX alarm_events_once_idx ON alarm_events (alarm_id, event)
    WHERE event IN ('raised', 'acknowledged', 'cleared');
CREATE INDEX alarm_events_alarm_idx ON alarm_events (alarm_id, id);
CREATE INDEX alarm_events_unpublished_idx ON alarm_events (id) WHERE published_at IS NULL;
