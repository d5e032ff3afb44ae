-- Application ids follow one rule everywhere (schemas/records.py APPLICATION_ID_PATTERN):
-- the device-id alphabet, up to 128 characters. Alarm rules and grants still allowed 64,
-- so a longer application accepted by the API failed in PostgreSQL.
ALTER TABLE alarm_rules DROP CONSTRAINT IF EXISTS alarm_rules_application_id_check;
ALTER TABLE alarm_rules ADD CONSTRAINT alarm_rules_application_id_check
    CHECK (application_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$');
ALTER TABLE user_applications DROP CONSTRAINT IF EXISTS user_applications_application_id_check;
ALTER TABLE user_applications ADD CONSTRAINT user_applications_application_id_check
    CHECK (application_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$');
