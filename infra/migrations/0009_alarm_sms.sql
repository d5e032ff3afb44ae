-- SMS recipients of an alarm rule's notifications (E.164 numbers), beside e-mail and webhooks.
ALTER TABLE alarm_rules ADD COLUMN IF NOT EXISTS notify_sms text[] NOT NULL DEFAULT '{}';
