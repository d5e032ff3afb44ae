-- Hardware identifiers a device's readings carry (GSM IMEI, ICCID, LoRaWAN DevAddr,
-- Bluetooth address ...), kept from metadata.extra by the PostgreSQL sink: the newest
-- value of each key wins.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS identifiers jsonb NOT NULL DEFAULT '{}'::jsonb;
