-- Device API keys: devices.api_key_hash (0001) holds the SHA-256 of a key. Looking a
-- key up by its hash tells "another device's key" (403) from "no such key" (401),
-- and no two devices may share a key.
CREATE UNIQUE INDEX devices_api_key_hash_idx ON devices (api_key_hash)
    WHERE api_key_hash IS NOT NULL;
